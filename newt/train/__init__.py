"""The `trained` stage: launch a training recipe (`newt.train.<method>`) as a child under `accelerate launch`.

The stage checks the recipe's hardware settings and that the prepared data suits the method, writes the resolved
recipe into its work folder, builds the `accelerate launch` command (presets, process count, precision), hands it
to the launcher it was given (the Dagster launcher resource in the asset, a plain subprocess in the CLI and tests)
and reads back `metrics.json`.

The work folder is stable per key (`Store.workdir`), so a child that crashed leaves its checkpoints there and the
next launch resumes from them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from newt.config import Recipe
from newt.stage import StageRun

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
USES_LIBRARIES = ("accelerate",)  # launched as `python -m accelerate.commands.launch` (newt.codeversion)

# Columns of the prepared data each method trains on (newt/prepare.py for SFT, newt/preference.py for the rest).
METHOD_COLUMNS = {
    "sft": ("input_ids", "labels"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "grpo": ("prompt",),
    "reward": ("prompt", "chosen", "rejected"),
}
METHOD_COLUMNS.update({m: METHOD_COLUMNS["dpo"] for m in ("orpo", "cpo", "simpo")})  # issue 16: paired rows


class TrainError(ValueError):
    pass


LOSS_PNG = "loss.png"  # the training curve in the artifact (newt/plots.py); the UI shows the same picture


def curve_history(metrics: dict) -> list[dict]:
    """The rows the loss pictures draw: the whole run's `loss_curve_rows`, or, in artifacts trained before it was
    recorded, the last logged rows."""
    if "loss_curve_rows" in metrics:
        return metrics["loss_curve_rows"]
    return [*(metrics.get("loss_history") or []), *(metrics.get("eval_loss_history") or [])]


def write_loss_png(metrics: dict, path: Path) -> None:
    from newt.plots import loss_png

    png = loss_png(curve_history(metrics), title="training loss")
    if png is not None:
        path.write_bytes(png)


def method_of(recipe: Recipe) -> str:
    return recipe.rl or "sft"


def module_of(recipe: Recipe) -> str:
    method = method_of(recipe)
    # KTO shares dpo.py (same data, another loss); CPO and SimPO share orpo.py (TRL's experimental paired trainers)
    return f"newt.train.{ {'kto': 'dpo', 'cpo': 'orpo', 'simpo': 'orpo'}.get(method, method)}"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A preset shipped with newt, or the user's own accelerate config file."""
    if name in presets():
        return PRESETS_DIR / f"{name}.yaml"
    path = Path(name).expanduser()
    if path.is_file():
        return path
    import difflib

    hint = difflib.get_close_matches(name, presets(), n=1)
    raise TrainError(f"accelerate_config: {name!r} is neither a newt preset nor an existing file"
                     + (f"; did you mean {hint[0]!r}?" if hint else "")
                     + f". Presets: {', '.join(presets())}; or give the path to an accelerate config YAML")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(recipe: Recipe, script_args: list[str], *, cuda: bool | None = None,
                       port: int | None = None, workdir: Path | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... -m newt.train.<method> <args>` for this recipe on this machine."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    from newt.train.multinode import machine_args

    n = recipe.num_processes
    config = preset_path(recipe.accelerate_config) if recipe.accelerate_config else None
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    from newt.train.launch_config import write_config  # issue 16: deepspeed / fsdp keys

    generated = write_config(recipe, workdir) if workdir is not None else None
    if generated is not None:
        config = generated
    if config:
        cmd += ["--config_file", str(config)]
    elif n > 1 or recipe.num_machines > 1:
        # `--cpu --num_processes 2` silently runs ONE process (accelerate 1.15); `--multi_gpu` with use_cpu=True in
        # the child gives real gloo DDP processes on CPU and NCCL ones on GPUs.
        cmd.append("--multi_gpu")
        if recipe.num_machines == 1:
            cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port())]
    elif not cuda:
        cmd.append("--cpu")
    cmd += [*machine_args(recipe, config), "--mixed_precision", recipe.mixed_precision, "--dynamo_backend", "no"]
    return [*cmd, "-m", module_of(recipe), *script_args]


def subprocess_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """Run the child with its output streamed to ours; a failure names the command and the exit code. The child
    dies with this process, and an interrupt here stops it (newt/train/lifetime.py)."""
    from newt.train import lifetime
    from newt.train.launch import start

    # One process: the child itself with accelerate's environment, forked from the warm process on the CPU.
    proc, cmd = start(cmd, env)
    try:
        proc.wait()
    finally:
        lifetime.stop(proc)
    if proc.returncode != 0:
        raise lifetime.ChildFailed(proc.returncode, cmd)


def default_launcher(recipe: Recipe):
    """Where the child runs when no launcher was given (CLI, tests): here, or on the Ray cluster (`launcher: ray`)."""
    if recipe.launcher == "ray":
        from newt.train.ray_job import RayRun

        return RayRun(recipe).launch
    return subprocess_launcher


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports newt from wherever the parent does (an editable checkout or site-packages).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    from newt.train.lifetime import watch_env

    return watch_env(env)  # the child dies with the run's processes (newt/train/lifetime.py)


def check_prepared(recipe: Recipe, prepared: Path) -> None:
    """Fail before launching when the prepared rows do not suit the method (e.g. DPO given SFT rows)."""
    data = Path(prepared) / "data"
    if not data.is_dir():
        return
    # The split's saved features name its columns: reading them costs no `datasets` import (seconds) in the parent.
    columns = set(json.loads((data / "train" / "dataset_info.json").read_text())["features"])
    method = method_of(recipe)
    missing = [c for c in METHOD_COLUMNS[method] if c not in columns]
    if recipe.processor_type and "images" not in columns:
        missing.append("images")
    if missing:
        have = next((m for m, cols in METHOD_COLUMNS.items() if set(cols) <= columns), None)
        raise TrainError(
            f"{method} needs prepared rows with columns {', '.join(METHOD_COLUMNS[method])}, but {prepared} has "
            f"{', '.join(sorted(columns))}" + (f" ({have} rows)" if have else "")
            + "; materialize the prepared stage again with this recipe (rl decides the prepared row format)"
        )


def build(run: StageRun) -> dict[str, Any]:
    from newt.models import resolve
    from newt.train.hardware import check_settings

    problems = check_settings(run.recipe)
    if problems:
        raise TrainError("trained: the recipe's hardware settings cannot run here:\n"
                         + "\n".join(f"  - {p}" for p in problems))
    check_prepared(run.recipe, run.upstream["prepared"])
    from newt.train import resume

    resume.check(run.recipe, run.workdir)  # a wrong resume_from_checkpoint fails now, not after the model has loaded
    from newt import tracking

    tracking.check(run.recipe)  # a tracker that is not installed, likewise
    if run.recipe.rl == "grpo":  # a misnamed reward fails now, not after the model has loaded
        from newt import rewards

        for spec in run.recipe.trl.reward_funcs:
            rewards.resolve(spec, max_completion_length=run.recipe.trl.max_completion_length)
    work = Path(run.workdir)
    recipe_file = work / "recipe.json"
    recipe_file.write_text(json.dumps(resolved_recipe(run.recipe), indent=2))
    args = ["--recipe", str(recipe_file), "--data", str(run.upstream["prepared"]), "--output", str(work),
            "--base-model", resolve(run.recipe.base_model), "--recipe-name", run.recipe.name, "--stage-key", run.key]
    (work / "metrics.json").unlink(missing_ok=True)  # a stale file from a crashed run must not pass for a result
    cmd = accelerate_command(run.recipe, args, workdir=work)
    (run.launcher or default_launcher(run.recipe))(cmd, child_env())
    metrics_file = work / "metrics.json"
    if not metrics_file.is_file() and run.recipe.machine_rank > 0:
        raise TrainError(f"machine_rank {run.recipe.machine_rank}: this machine's part of the training finished; "
                         "machine 0 writes and commits the trained artifact, this one commits nothing")
    if not metrics_file.is_file():
        raise RuntimeError(f"training child exited without writing {metrics_file}; see its log above")
    metrics = json.loads(metrics_file.read_text())
    write_loss_png(metrics, work / LOSS_PNG)  # issue 17: the curve, beside the model
    return metrics


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the child reads it, with storage options redacted (the child never needs credentials)."""
    data = recipe.model_dump(mode="json")
    from newt.sources import redact

    for spec in data["datasets"]:
        spec["storage_options"] = redact(spec["storage_options"])
    return data
