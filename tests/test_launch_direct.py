"""A one-process local launch starts the training child itself, with the environment `accelerate launch` gives it
(newt/train/launch.py); every other launch keeps the `accelerate launch` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from newt.config import load_recipe
from newt.train import accelerate_command, module_of
from newt.train.launch import direct

DUMP = "import json, os, sys\nopen(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))\n"


def _dump_command(recipe, tmp_path: Path, out: Path, **kw) -> list[str]:
    """The trained stage's launch command for `recipe`, with a module that writes its environment as the child."""
    (tmp_path / "envdump.py").write_text(DUMP)
    cmd = accelerate_command(recipe, [str(out)], cuda=False, **kw)
    cmd[cmd.index(module_of(recipe))] = "envdump"
    return cmd


@pytest.mark.parametrize("omp", ["3", None])
def test_direct_child_gets_the_environment_accelerate_launch_gives_it(tiny_recipe_file, tmp_path: Path,
                                                                     omp: str | None) -> None:
    recipe = load_recipe(tiny_recipe_file(extra="mixed_precision: bf16\n"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]), NEWT_MARK="parent")
    if omp is not None:  # with OMP_NUM_THREADS the launcher keeps it; without, it picks the physical cores
        env["OMP_NUM_THREADS"] = omp
    launched, direct_out = tmp_path / "launched.json", tmp_path / "direct.json"
    cmd = _dump_command(recipe, tmp_path, launched)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    child, child_env = direct([*cmd[:-1], str(direct_out)], env)
    assert child == [sys.executable, "-m", "envdump", str(direct_out)]  # no launcher process in between
    subprocess.run(child, env=child_env, check=True)
    got, want = json.loads(direct_out.read_text()), json.loads(launched.read_text())
    assert {k: got.get(k) for k in set(got) | set(want)} == {k: want.get(k) for k in set(got) | set(want)}
    assert want["ACCELERATE_USE_CPU"] == "True" and want["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert want["NEWT_MARK"] == "parent" and (omp is None or want["OMP_NUM_THREADS"] == omp)


def test_launches_that_need_accelerate_keep_its_command(tiny_recipe_file, tmp_path: Path) -> None:
    base = load_recipe(tiny_recipe_file())
    conf = tmp_path / "own.yaml"
    conf.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\n")
    for recipe, kw in [
        (base.model_copy(update={"num_processes": 2}), {"port": 29511}),  # DDP: accelerate starts every rank
        (base.model_copy(update={"accelerate_config": str(conf)}), {}),  # a config file: accelerate reads it
        (base.model_copy(update={"num_machines": 2, "main_process_ip": "10.0.0.1"}), {}),  # several machines
    ]:
        cmd = accelerate_command(recipe, ["--x"], cuda=False, **kw)
        assert direct(cmd, {"A": "1"}) == (cmd, {"A": "1"})
    plain = ["python", "-m", "newt.train.sft", "--x"]  # not an accelerate command (a Ray or pod command, say)
    assert direct(plain, {}) == (plain, {})
