"""The `trained` stage: SFT children (LoRA, QLoRA, full), resume after SIGKILL, two processes, settings checks.

Trainings run in this process where the test is about the recipe (cheap: no interpreter start-up); through
`accelerate launch` where the test is about launching (kill, resume, world size).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from newt.cache import Store
from newt.config import Recipe, load_recipe
from newt.pipeline import plan, run_stage


def inprocess_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """Run the child's `main` here instead of under `accelerate launch` (world size 1, same code path)."""
    import importlib

    i = cmd.index("-m", 1 + cmd.index("accelerate.commands.launch"))
    importlib.import_module(cmd[i + 1]).main(cmd[i + 2:])


def materialize_trained(recipe: Recipe, root: Path, launcher=inprocess_launcher) -> dict:
    store = Store(str(root))
    keys = plan(recipe)
    for stage in ("dataset", "prepared"):
        run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    return run_stage(recipe, "trained", store, keys=keys, launcher=launcher).metadata


@pytest.mark.slow
def test_qlora_trains_a_4bit_base_on_cpu(tiny_recipe_file, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from newt.models import load_model, resolve
    from newt.train.child import load_base

    recipe = load_recipe(tiny_recipe_file(extra="adapter: qlora\nlora_modules_to_save: []\n"))
    base = load_base(recipe, resolve(recipe.base_model))
    assert any(type(m).__name__ == "Linear4bit" for m in base.modules()), "qlora loads the base in 4-bit"

    meta = materialize_trained(recipe, tmp_path / "store")
    assert meta["adapter"] == "qlora" and meta["global_step"] == 3
    art = Store(str(tmp_path / "store")).local_path("trained", plan(recipe)["trained"].key)
    weights = load_file(str(art / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training moved it"
    # the adapter applies to the full-precision base too (what the merge stage does)
    model = PeftModel.from_pretrained(load_model(resolve(recipe.base_model), dtype=torch.float32), str(art / "adapter"))
    assert model is not None


@pytest.mark.slow
def test_full_fine_tune_saves_a_model(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe_file(extra="adapter: null\nmax_steps: 2\n"))
    meta = materialize_trained(recipe, tmp_path / "store")
    art = Store(str(tmp_path / "store")).local_path("trained", plan(recipe)["trained"].key)
    assert meta["adapter"] == "full" and (art / "model" / "model.safetensors").is_file()
    assert not (art / "adapter").exists() and not (art / "checkpoints").exists()
    assert meta["trainable_parameters"] > 100_000  # every weight of the ~140k-parameter model


KILL_AT = 3


def killing_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """Launch under accelerate, read the child's step lines and SIGKILL the whole process group at step KILL_AT."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step={KILL_AT} "):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"training child killed at step {KILL_AT} (exit {proc.returncode})")
    proc.wait()
    raise AssertionError(f"the child ended (exit {proc.returncode}) before step {KILL_AT}:\n{''.join(seen[-30:])}")


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tiny_recipe_file,
                                                                                  tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe_file(extra="max_steps: 8\nsave_steps: 2\n"))
    with pytest.raises(RuntimeError, match="killed"):
        materialize_trained(recipe, tmp_path / "store", killing_launcher)
    work = Store(str(tmp_path / "store")).workdir("trained", plan(recipe)["trained"].key)
    saved = sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*"))
    assert "checkpoint-2" in saved and "checkpoint-8" not in saved, saved

    resumed = materialize_trained(recipe, tmp_path / "store")  # the asset runs again on the same key
    assert resumed["resumed_from_step"] >= 2 and resumed["global_step"] == 8
    assert resumed["loss_history"][0]["step"] == resumed["resumed_from_step"] + 1, "resumed, not restarted"

    fresh = materialize_trained(recipe, tmp_path / "fresh")
    assert fresh["resumed_from_step"] == 0
    # Same seed, same data order (Trainer restores RNG and skips the consumed batches): the step-8 loss agrees.
    # Tolerance 1e-3 absolute covers thread-count differences in CPU reductions between the two launches.
    assert resumed["final_loss"] == pytest.approx(fresh["final_loss"], abs=1e-3)
    assert resumed["final_loss"] < fresh["loss_history"][0]["loss"]


@pytest.mark.slow
def test_two_processes_train_as_world_size_two_through_dagster(tiny_recipe_file, tmp_path: Path) -> None:
    import dagster as dg

    from definitions import build_definitions
    from resources import NewtStore

    recipes = tiny_recipe_file(extra="num_processes: 2\nmax_steps: 2\n").parent
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    selection = [a for a in defs.assets if a.key.path[-1] in ("dataset", "prepared", "trained")]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(selection, resources=defs.resources, instance=instance)
    [trained] = [e.materialization for e in result.get_asset_materialization_events()
                 if e.materialization.asset_key.path[-1] == "trained"]
    assert trained.metadata["world_size"].value == 2  # reported by the child's rank 0 through Pipes
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert sum("successfully opened dagster pipes" in m for m in logs) == 1, "only rank 0 opens Pipes"
    assert any(m.startswith("step=2 loss=") for m in logs)


def test_accelerate_command_follows_the_recipe(tiny_recipe_file) -> None:
    from newt.train import PRESETS_DIR, accelerate_command

    base = load_recipe(tiny_recipe_file())
    one = accelerate_command(base, ["--x"], cuda=False)
    assert "--cpu" in one and one[one.index("--num_processes") + 1] == "1"
    assert one[one.index("-m", 3):] == ["-m", "newt.train.sft", "--x"]
    two = accelerate_command(base.model_copy(update={"num_processes": 2, "mixed_precision": "bf16"}), [],
                             cuda=False, port=29999)
    # `--cpu --num_processes 2` runs one process; --multi_gpu + use_cpu in the child runs two gloo processes
    assert "--cpu" not in two and "--multi_gpu" in two and two[two.index("--main_process_port") + 1] == "29999"
    assert two[two.index("--num_processes") + 1] == "2" and two[two.index("--mixed_precision") + 1] == "bf16"
    dpo = accelerate_command(base.model_copy(update={"rl": "dpo"}), [], cuda=True)
    assert dpo[dpo.index("-m", 3) + 1] == "newt.train.dpo" and "--cpu" not in dpo
    for name in ("single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        cmd = accelerate_command(base.model_copy(update={"accelerate_config": name}), [], cuda=True)
        assert cmd[cmd.index("--config_file") + 1] == str(PRESETS_DIR / f"{name}.yaml")


def test_user_accelerate_config_replaces_presets_and_typos_are_named(tiny_recipe_file, tmp_path: Path) -> None:
    import yaml

    from newt.train import PRESETS_DIR, TrainError, accelerate_command

    for preset in PRESETS_DIR.glob("*.yaml"):
        assert yaml.safe_load(preset.read_text())["distributed_type"]  # every preset is an accelerate config
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    base = load_recipe(tiny_recipe_file())
    cmd = accelerate_command(base.model_copy(update={"accelerate_config": str(own)}), [], cuda=True)
    assert cmd[cmd.index("--config_file") + 1] == str(own)
    with pytest.raises(TrainError, match="did you mean 'fsdp'"):
        accelerate_command(base.model_copy(update={"accelerate_config": "fsdb"}), [], cuda=True)


def test_gpu_settings_are_checked_with_a_clear_error(tiny_recipe_file) -> None:
    from newt.train.hardware import check_settings

    base = load_recipe(tiny_recipe_file())
    assert check_settings(base, cuda=False) == []
    problems = check_settings(base.model_copy(update={"attn_implementation": "flash_attention_2", "tf32": True,
                                                      "mixed_precision": "fp16",
                                                      "trl": base.trl.model_copy(update={"use_vllm": True})}),
                              cuda=False)
    assert len(problems) == 4 and problems[-1].startswith("trl.use_vllm:")
    assert "pip install 'newt[gpu]'" in problems[0] or "CUDA" in problems[0]
    assert any(p.startswith("tf32:") for p in problems) and any(p.startswith("mixed_precision:") for p in problems)


def test_gpu_settings_fail_the_stage_before_launching(tiny_recipe_file, tmp_path: Path) -> None:
    from newt.train import TrainError

    recipe = load_recipe(tiny_recipe_file(extra="tf32: true\n"))
    launched = []
    with pytest.raises(TrainError, match="tf32"):
        materialize_trained(recipe, tmp_path / "store", lambda cmd, env: launched.append(cmd))
    assert launched == []


def test_model_settings_reach_the_model_and_the_trainer(tiny_recipe_file, tmp_path: Path) -> None:
    import torch

    from newt.models import resolve
    from newt.train.child import load_base, training_kwargs

    base = load_recipe(tiny_recipe_file())
    path = resolve(base.base_model)
    model = load_base(base, path)
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    other = load_base(base.model_copy(update={"bf16": True, "attn_implementation": "eager"}), path)
    assert other.dtype == torch.bfloat16 and other.config._attn_implementation == "eager"

    kw = training_kwargs(base, tmp_path)
    assert (kw["gradient_checkpointing"], kw["torch_compile"], kw["bf16"], kw["save_steps"]) == (False, False,
                                                                                                False, 50)
    kw = training_kwargs(base.model_copy(update={"gradient_checkpointing": True, "torch_compile": True,
                                                 "mixed_precision": "bf16", "save_steps": 7, "tf32": True}),
                         tmp_path)
    assert (kw["gradient_checkpointing"], kw["torch_compile"], kw["bf16"], kw["save_steps"], kw["tf32"]) == (
        True, True, True, 7, True)
