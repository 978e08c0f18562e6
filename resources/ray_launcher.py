"""The `trained` asset's child on a Ray cluster (`newt.train.ray_job` does the work; this is the Dagster glue).

Pipes: the context travels in the environment (`PipesEnvContextInjector`), which the Ray launcher hands to machine
0's launch only; the messages come back through a file in the stage's work folder (`PipesFileMessageReader`), which
the Ray nodes and the Dagster process already share (the checkpoints and metrics live there). dagster-ray's
`PipesRayJobClient` submits a Ray *job* through the dashboard's job API and reads its messages from the job's logs;
newt starts one accelerate launch per node from actors in a placement group instead (so that it can place the
machines on distinct nodes and restart them all from the last checkpoint), so that client does not fit — and a
cluster started with `--include-dashboard false` has no job API at all.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from newt.config import Recipe
from .launcher import TrainingLauncher

MESSAGES = ".pipes-messages.jsonl"  # in the work folder; removed after the run, so never committed


class RayLauncher(TrainingLauncher):
    """One `accelerate launch` per node of a Ray cluster (`pip install 'newt[ray]'`), resumed after failures."""

    address: str | None = Field(None, description="Cluster address: `HOST:PORT` of the head (its GCS port) or "
                                "`ray://HOST:PORT` (Ray Client); RAY_ADDRESS when unset.")

    def launch(self, context: dg.AssetExecutionContext, recipe: Recipe, cmd: list[str], env: dict[str, str]) -> None:
        from newt.train.ray_job import RayRun

        messages = Path(cmd[cmd.index("--output") + 1]) / MESSAGES
        messages.unlink(missing_ok=True)
        with dg.open_pipes_session(context=context, context_injector=dg.PipesEnvContextInjector(),
                                   message_reader=dg.PipesFileMessageReader(str(messages))) as session:
            RayRun(recipe, self.address, log=context.log.info).launch(
                cmd, {**env, **session.get_bootstrap_env_vars()})
        messages.unlink(missing_ok=True)
