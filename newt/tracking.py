"""Experiment tracking: the recipe's tracker keys → transformers' `report_to`, the trackers' environment variables,
and links to the tracker run for the `trained` asset's metadata.

The trackers are transformers' own integration callbacks (`MLflowCallback`, `WandbCallback`,
`TensorBoardCallback`), switched on through `TrainingArguments.report_to`; they read their settings from the
environment, which `start` fills from the recipe. newt adds one callback, `RunParams` (newt/tracking_callback.py), that puts what the
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
