"""Experiment tracking: the recipe's tracker keys → transformers' `report_to`, the trackers' environment variables,
and links to the tracker run for the `trained` asset's metadata.

The trackers are transformers' own integration callbacks (`MLflowCallback`, `WandbCallback`,
`TensorBoardCallback`), switched on through `TrainingArguments.report_to`; they read their settings from the
environment, which `start` fills from the recipe. newt adds one callback, `RunParams`, that puts what the
integration callbacks do not know on the tracker run — the recipe, the Dagster run id and the stage key — and
notes where the run is (URL or folder).

Which trackers are on (as in Axolotl): the names in `report_to`, plus `wandb` when `wandb_project` is set, `mlflow`
when `mlflow_tracking_uri` or `mlflow_experiment_name` is set, `tensorboard` when `use_tensorboard` is true;
`wandb_mode: disabled` turns W&B off. Local tracker files (TensorBoard events, W&B's run folders, the default
MLflow store) go under `NEWT_TRACKING_DIR` (default `.newt/tracking`, beside the default store), never into the
artifact. Credentials (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN/USERNAME/PASSWORD) are read by the trackers from the
environment; newt never copies them, and strips user:password from a tracking URI before it names it anywhere.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from transformers import TrainerCallback

from newt.config import Recipe

TRACKERS = ("mlflow", "wandb", "tensorboard")


def trackers(recipe: Recipe) -> list[str]:
    """The trackers this recipe reports to, in a fixed order."""
    on = set(recipe.report_to)
    if recipe.wandb_project:
        on.add("wandb")
    if recipe.mlflow_tracking_uri or recipe.mlflow_experiment_name:
        on.add("mlflow")
    if recipe.use_tensorboard:
        on.add("tensorboard")
    if recipe.wandb_mode == "disabled":
        on.discard("wandb")
    return [t for t in TRACKERS if t in on]


PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}


def check(recipe: Recipe) -> None:
    """Fail before launch, naming the extra to install, when a tracker the recipe asks for is not installed."""
    import importlib.util

    missing = [name for name in trackers(recipe) if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise ValueError(f"the recipe reports to {', '.join(missing)} (report_to / wandb_* / mlflow_* / "
                         f"use_tensorboard) but {' and '.join(missing)} is not installed; pip install "
                         "'newt[tracking]', or switch that tracker off")


def tracking_dir() -> Path:
    return Path(os.environ.get("NEWT_TRACKING_DIR", ".newt/tracking")).expanduser().resolve()


def public_uri(uri: str) -> str:
    """A tracking URI without user:password (`http://u:p@host` → `http://host`), safe for logs and metadata."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def flat_params(data: Any, prefix: str = "recipe") -> dict[str, str]:
    """Nested recipe values → {`recipe.a.b`: text}; list items by index (`recipe.datasets.0.path`)."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flat_params(v, f"{prefix}.{k}"))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flat_params(v, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(data) if not isinstance(data, str) else data
    return out


@dataclass
class Tracking:
    """What a training child needs from the tracking settings: TrainingArguments kwargs, the callback order, and
    the links it reports at the end."""

    names: list[str]
    run_name: str
    params: dict[str, Any]  # recipe + run identity, put on the tracker run by RunParams
    tensorboard_dir: Path | None = None
    links: dict[str, str] = field(default_factory=dict)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"report_to": list(self.names) or "none", "run_name": self.run_name}

    def attach(self, trainer: Any) -> None:
        """Put the integration callbacks after newt's own (so they see the `tokens_per_second` StreamMetrics adds to
        each log), then `RunParams` last (it runs once the integrations have opened their runs)."""
        if not self.names:
            return
        from transformers.integrations import get_reporting_integration_callbacks

        for cls in get_reporting_integration_callbacks(self.names):
            callback = trainer.pop_callback(cls)
            if callback is not None:
                trainer.add_callback(callback)
        trainer.add_callback(RunParams(self, trainer.callback_handler.callbacks))


def start(recipe: Recipe, recipe_name: str, stage_key: str, dagster_run_id: str | None) -> Tracking:
    """Fill the trackers' environment variables from the recipe (this process and the ones it starts) and return
    the `Tracking` a child passes to its trainer. Values the user already exported win over defaults, never over
    the recipe's explicit keys."""
    names = trackers(recipe)
    run_name = recipe.wandb_name or recipe_name
    identity = {"newt.recipe_name": recipe_name, "newt.stage_key": stage_key,
                "newt.dagster_run_id": dagster_run_id or "none"}
    track = Tracking(names, run_name, {**identity, "recipe": recipe.model_dump(mode="json")})
    if not names:
        return track
    root = tracking_dir()
    env = os.environ
    if "mlflow" in names:
        if recipe.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = recipe.mlflow_tracking_uri
        elif not env.get("MLFLOW_TRACKING_URI"):
            root.mkdir(parents=True, exist_ok=True)
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        experiment = recipe.mlflow_experiment_name or env.get("MLFLOW_EXPERIMENT_NAME") or recipe_name
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
        env["MLFLOW_TAGS"] = json.dumps(identity)
        # Each child process is one MLflow run; a run left open by a crash is not continued.
        env.pop("MLFLOW_RUN_ID", None)
    if "wandb" in names:
        for var, value in (("WANDB_PROJECT", recipe.wandb_project or env.get("WANDB_PROJECT") or recipe_name),
                           ("WANDB_ENTITY", recipe.wandb_entity), ("WANDB_MODE", recipe.wandb_mode),
                           ("WANDB_RUN_ID", recipe.wandb_run_id)):
            if value:
                env[var] = value
        if recipe.wandb_run_id:
            env["WANDB_RESUME"] = "allow"  # the same id again continues that run instead of failing
        env.setdefault("WANDB_DIR", str(root))
        Path(env["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if "tensorboard" in names:
        stamp = dagster_run_id[:8] if dagster_run_id else time.strftime("%Y%m%d-%H%M%S")
        track.tensorboard_dir = root / "tensorboard" / recipe_name / f"{stage_key[:12]}-{stamp}"
        env["TENSORBOARD_LOGGING_DIR"] = str(track.tensorboard_dir)
    return track


class RunParams(TrainerCallback):
    """Puts the recipe and the run's identity on each tracker run once it is open, and records where it is."""

    def __init__(self, track: Tracking, callbacks: list[Any]):
        self.track = track
        self.callbacks = callbacks

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        track, params = self.track, self.track.params
        recipe = params.get("recipe", {})
        if "mlflow" in track.names:
            import mlflow

            run = mlflow.active_run()
            if run is not None:
                # MLflow's limits: 6000 characters per value, names of [A-Za-z0-9_\-. /] (user keys may hold others)
                flat = {re.sub(r"[^0-9A-Za-z_\-. /]", "_", k): v for k, v in flat_params(recipe).items()
                        if len(v) <= 6000}
                items = list(flat.items())
                for i in range(0, len(items), 100):  # at most 100 params per call (MLflow's batch limit)
                    mlflow.log_params(dict(items[i:i + 100]))
                mlflow.log_dict(recipe, "newt_recipe.json")
                uri = public_uri(mlflow.get_tracking_uri())
                exp, rid = run.info.experiment_id, run.info.run_id
                track.links["mlflow_run_id"] = rid
                track.links["mlflow_run" + ("_url" if uri.startswith("http") else "")] = (
                    f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{rid}" if uri.startswith("http")
                    else f"{uri} experiment {exp} run {rid}")
        if "wandb" in track.names:
            import wandb

            if wandb.run is not None:
                identity = {k: v for k, v in params.items() if k != "recipe"}
                wandb.config.update({"recipe": recipe, **identity}, allow_val_change=True)
                track.links["wandb_run_id"] = wandb.run.id
                if wandb.run.url:
                    track.links["wandb_run_url"] = wandb.run.url
                else:  # offline: the run folder (`wandb sync <folder>` uploads it)
                    track.links["wandb_run_dir"] = str(Path(wandb.run.dir).parent)
        if "tensorboard" in track.names:
            from transformers.integrations import TensorBoardCallback

            for cb in self.callbacks:
                if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                    cb.tb_writer.add_text("newt/recipe", f"```\n{json.dumps(recipe, indent=2)}\n```")
                    cb.tb_writer.add_text("newt/run", json.dumps({k: v for k, v in params.items() if k != "recipe"}))
            track.links["tensorboard_logdir"] = str(track.tensorboard_dir)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and "wandb" in self.track.names:
            import wandb

            if wandb.run is not None:
                wandb.finish()  # flush now: the child reports the run as done only after its files are written
