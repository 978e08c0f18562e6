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
import subprocess
import sys
from pathlib import Path
from typing import Any

from newt.config import Recipe
from newt.pipeline import StageRun

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"

# Columns of the prepared data each method trains on (newt/prepare.py for SFT, newt/preference.py for the rest).
METHOD_COLUMNS = {
    "sft": ("input_ids", "labels"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "grpo": ("prompt",),
}


class TrainError(ValueError):
    pass


LOSS_PNG = "loss.png"  # the training curve in the artifact (newt/plots.py); the UI links it


def write_loss_png(history: list[dict], path: Path) -> None:
    from newt.plots import loss_png

    png = loss_png(history, title="training loss")
    if png is not None:
        path.write_bytes(png)


def method_of(recipe: Recipe) -> str:
    return recipe.rl or "sft"


def module_of(recipe: Recipe) -> str:
    method = method_of(recipe)
    return f"newt.train.{'dpo' if method == 'kto' else method}"  # KTO shares dpo.py: same data, another loss


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
                       port: int | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... -m newt.train.<method> <args>` for this recipe on this machine."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    n = recipe.num_processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if recipe.accelerate_config:
        cmd += ["--config_file", str(preset_path(recipe.accelerate_config))]
    elif n > 1:
        # `--cpu --num_processes 2` silently runs ONE process (accelerate 1.15); `--multi_gpu` with use_cpu=True in
        # the child gives real gloo DDP processes on CPU and NCCL ones on GPUs.
        cmd += ["--multi_gpu", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port())]
    elif not cuda:
        cmd.append("--cpu")
    cmd += ["--num_processes", str(n), "--num_machines", "1", "--mixed_precision", recipe.mixed_precision,
            "--dynamo_backend", "no"]
    return [*cmd, "-m", module_of(recipe), *script_args]


def subprocess_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """Run the child with its output streamed to ours; a failure names the command and the exit code."""
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"training child failed with exit code {proc.returncode}: {' '.join(cmd)}")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports newt from wherever the parent does (an editable checkout or site-packages).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def check_prepared(recipe: Recipe, prepared: Path) -> None:
    """Fail before launching when the prepared rows do not suit the method (e.g. DPO given SFT rows)."""
    import datasets

    data = Path(prepared) / "data"
    if not data.is_dir():
        return
    columns = set(datasets.load_from_disk(str(data))["train"].column_names)
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
    if run.recipe.rl == "grpo":  # a misnamed reward fails now, not after the model has loaded
        from newt import rewards

        for spec in run.recipe.trl.reward_funcs:
            rewards.resolve(spec, max_completion_length=run.recipe.trl.max_completion_length)
    work = Path(run.workdir)
    recipe_file = work / "recipe.json"
    recipe_file.write_text(json.dumps(resolved_recipe(run.recipe), indent=2))
    args = ["--recipe", str(recipe_file), "--data", str(run.upstream["prepared"]), "--output", str(work),
            "--base-model", resolve(run.recipe.base_model)]
    (work / "metrics.json").unlink(missing_ok=True)  # a stale file from a crashed run must not pass for a result
    cmd = accelerate_command(run.recipe, args)
    (run.launcher or subprocess_launcher)(cmd, child_env())
    metrics_file = work / "metrics.json"
    if not metrics_file.is_file():
        raise RuntimeError(f"training child exited without writing {metrics_file}; see its log above")
    metrics = json.loads(metrics_file.read_text())
    write_loss_png(metrics.get("loss_history") or [], work / LOSS_PNG)  # issue 17: the curve, beside the model
    return metrics


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the child reads it, with storage options redacted (the child never needs credentials)."""
    data = recipe.model_dump(mode="json")
    from newt.sources import redact

    for spec in data["datasets"]:
        spec["storage_options"] = redact(spec["storage_options"])
    return data
