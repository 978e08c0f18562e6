"""`attach` puts the trackers' callbacks on a trainer, with `RunParams`, the callback that puts the recipe and the
run's identity on each tracker run (newt/tracking.py decides which trackers are on). Its own module because it subclasses transformers'
`TrainerCallback`: the trained stage checks the tracking settings before it launches the child, and importing
transformers there would cost seconds the child pays anyway."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from newt.tracking import Tracking, flat_params, public_uri


def attach(track: Tracking, trainer: Any) -> None:
    """Put the integration callbacks after newt's own (so they see the `tokens_per_second` StreamMetrics adds to
    each log), then `RunParams` last (it runs once the integrations have opened their runs)."""
    if not track.names:
        return
    from transformers.integrations import get_reporting_integration_callbacks

    for cls in get_reporting_integration_callbacks(track.names):
        callback = trainer.pop_callback(cls)
        if callback is not None:
            trainer.add_callback(callback)
    trainer.add_callback(RunParams(track, trainer.callback_handler.callbacks))


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
