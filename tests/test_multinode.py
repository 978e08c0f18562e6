"""Several machines with `accelerate launch`: two "nodes" on 127.0.0.1, each its own launch with its machine rank
(gloo), train as one world of size 2 and end with the same weights on both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan, run_stage
from newt.train import accelerate_command, child_env, free_port, resolved_recipe
from newt.train.multinode import MachineError, for_machine


def test_machine_flags_follow_the_recipe_and_the_accelerate_config(tiny_recipe_file, tmp_path: Path) -> None:
    base = load_recipe(tiny_recipe_file(extra="num_machines: 2\nnum_processes: 2\nmain_process_ip: 10.0.0.5\n"
                                              "machine_rank: 1\n"))
    cmd = accelerate_command(base, ["--x"], cuda=False)
    flag = lambda c, f: c[c.index(f) + 1]  # noqa: E731
    # accelerate counts processes over all machines: 2 per machine x 2 machines
    assert (flag(cmd, "--num_processes"), flag(cmd, "--num_machines"), flag(cmd, "--machine_rank")) == ("4", "2", "1")
    assert (flag(cmd, "--main_process_ip"), flag(cmd, "--main_process_port")) == ("10.0.0.5", "29500")
    assert "--multi_gpu" in cmd and "--cpu" not in cmd and cmd[-3:] == ["-m", "newt.train.sft", "--x"]

    conf = tmp_path / "multinode.yaml"
    conf.write_text(yaml.safe_dump({"num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.9",
                                    "main_process_port": 1234}))
    from_file = accelerate_command(load_recipe(tiny_recipe_file(extra=f"num_machines: 2\naccelerate_config: {conf}\n"
                                                                       "main_process_ip: 10.0.0.9\n")), [], cuda=False)
    assert (flag(from_file, "--machine_rank"), flag(from_file, "--main_process_port")) == ("1", "1234")
    with pytest.raises(MachineError, match="num_machines: 2 but the recipe has num_machines: 1"):
        accelerate_command(load_recipe(tiny_recipe_file(extra=f"accelerate_config: {conf}\n")), [], cuda=False)

    ray = load_recipe(tiny_recipe_file(extra="num_machines: 2\nlauncher: ray\n"))
    node = for_machine(accelerate_command(ray, ["--x"], cuda=False), 1, "10.1.1.1", 4321)
    assert "--machine_rank" not in accelerate_command(ray, [], cuda=False)
    assert node[node.index("-m", 3) - 6:node.index("-m", 3)] == ["--machine_rank", "1", "--main_process_ip",
                                                                 "10.1.1.1", "--main_process_port", "4321"]


def test_bad_machine_settings_are_named(tiny_recipe_file) -> None:
    from newt.config import RecipeError

    with pytest.raises(RecipeError, match="machine_rank 2 is not below num_machines 2"):
        load_recipe(tiny_recipe_file(extra="num_machines: 2\nmachine_rank: 2\nmain_process_ip: 127.0.0.1\n"))
    with pytest.raises(RecipeError, match="num_machines: 2 needs main_process_ip"):
        load_recipe(tiny_recipe_file(extra="num_machines: 2\n"))
    with pytest.raises(RecipeError, match="machine_rank is set by the Ray launcher"):
        load_recipe(tiny_recipe_file(extra="num_machines: 2\nmachine_rank: 1\nlauncher: ray\n"))


def test_machine_placement_does_not_key_training_but_machine_count_does(tiny_recipe_file) -> None:
    one = plan(load_recipe(tiny_recipe_file(extra="num_machines: 2\nmain_process_ip: 10.0.0.1\n")))["trained"].key
    other = plan(load_recipe(tiny_recipe_file(extra="num_machines: 2\nmain_process_ip: 10.0.0.2\nmachine_rank: 1\n"
                                                    "main_process_port: 999\n")))["trained"].key
    single = plan(load_recipe(tiny_recipe_file()))["trained"].key
    assert one == other != single


def test_two_nodes_train_as_one_world_and_end_with_identical_weights(tiny_recipe_file, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    port = free_port()
    extra = f"num_machines: 2\nmain_process_ip: 127.0.0.1\nmain_process_port: {port}\nmax_steps: 2\nsave_steps: 2\n"
    recipe = load_recipe(tiny_recipe_file(extra=extra))
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe)
    for stage in ("dataset", "prepared"):
        run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    prepared = store.local_path("prepared", keys["prepared"].key)
    procs, outputs = [], []
    for rank in (0, 1):  # each "machine": its own recipe copy (its rank), its own work folder, its own launch
        node = recipe.model_copy(update={"machine_rank": rank})
        out = tmp_path / f"machine-{rank}"
        out.mkdir()
        (out / "recipe.json").write_text(json.dumps(resolved_recipe(node)))
        cmd = accelerate_command(node, ["--recipe", str(out / "recipe.json"), "--data", str(prepared),
                                        "--output", str(out), "--base-model", "builtin:tiny-llama"], cuda=False)
        log = open(out / "launch.log", "w")
        procs.append(subprocess.Popen(cmd, env=child_env(), stdout=log, stderr=subprocess.STDOUT))
        outputs.append(out)
    for p, out in zip(procs, outputs):
        assert p.wait(timeout=300) == 0, (out / "launch.log").read_text()[-3000:]
    metrics = json.loads((outputs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2
    assert not (outputs[1] / "metrics.json").exists()  # machine 1 reports nothing: machine 0 owns the result
    # Machine 1 kept its own checkpoint (save_on_each_node), written by its rank-1 process; its weights are
    # exactly machine 0's final adapter.
    ckpt = outputs[1] / "checkpoints" / "checkpoint-2"
    assert (ckpt / "rng_state_1.pth").is_file() and not (ckpt / "rng_state_0.pth").exists()
    final = load_file(str(outputs[0] / "adapter" / "adapter_model.safetensors"))
    other = load_file(str(ckpt / "adapter_model.safetensors"))
    assert final.keys() == other.keys() and len(final) > 0
    assert all(bool((final[k] == other[k]).all()) for k in final)
