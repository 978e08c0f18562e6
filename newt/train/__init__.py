"""The `trained` stage: launch a training recipe (`newt.train.<method>`) as a child under `accelerate launch`.

The stage writes the resolved recipe into its work folder, launches the child through the launcher it was given
(Dagster Pipes in the asset, a plain subprocess in the CLI and tests) and reads back `metrics.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from newt.pipeline import StageRun

METHOD = "sft"


def accelerate_command(script_args: list[str], *, module: str, num_processes: int = 1) -> list[str]:
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    return [*cmd, "-m", module, *script_args]


def subprocess_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """Run the child with its output streamed to ours; a failure names the command and the exit code."""
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"training child failed with exit code {proc.returncode}: {' '.join(cmd)}")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports newt from wherever the parent does (an editable checkout or site-packages).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def build(run: StageRun) -> dict[str, Any]:
    from newt.models import resolve

    work = Path(run.workdir)
    recipe_file = work / "recipe.json"
    recipe_file.write_text(json.dumps(resolved_recipe(run.recipe), indent=2))
    args = ["--recipe", str(recipe_file), "--data", str(run.upstream["prepared"]), "--output", str(work),
            "--base-model", resolve(run.recipe.base_model)]
    cmd = accelerate_command(args, module=f"newt.train.{METHOD}")
    (run.launcher or subprocess_launcher)(cmd, child_env())
    metrics_file = work / "metrics.json"
    if not metrics_file.is_file():
        raise RuntimeError(f"training child exited without writing {metrics_file}; see its log above")
    return json.loads(metrics_file.read_text())


def resolved_recipe(recipe) -> dict[str, Any]:
    """The recipe as the child reads it, with storage options redacted (the child never needs credentials)."""
    data = recipe.model_dump(mode="json")
    from newt.sources import redact

    for spec in data["datasets"]:
        spec["storage_options"] = redact(spec["storage_options"])
    return data
