"""Scheduled retraining: `schedule: "<cron>"` in a recipe → a schedule on the recipe's job.

Each tick plans the recipe (all six keys, from current code, recipe fields and data versions) and requests only
the stages with no committed artifact under their current key — Dagster's "stale or missing", decided by newt's
content-addressed store rather than by Dagster's run history, so it holds across instances and stores. When the
world is unchanged the tick is skipped (planning costs seconds: file digests are cached by size and mtime);
requesting the whole job would also be cheap, since every unchanged stage returns at once as a cache hit.
"""

from __future__ import annotations

import dagster as dg

from newt.config import Recipe

if __package__.startswith("newt_dagster."):  # installed from the wheel (pyproject.toml's package-dir)
    from ..resources.store import NewtStore
else:  # a checkout: top-level packages beside newt/
    from resources.store import NewtStore


def recipe_schedules(recipe: Recipe) -> list[dg.ScheduleDefinition]:
    if not recipe.schedule:
        return []

    @dg.schedule(
        name=f"{recipe.name}_retrain_schedule",
        cron_schedule=recipe.schedule,
        job_name=f"{recipe.name}_job",
        execution_timezone="UTC",
        # The recipe asked for it: the schedule is on as soon as the code location loads (toggle it in the UI).
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Retrain recipe {recipe.name} ({recipe.schedule} UTC): materialize its stale or missing stages.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext, store: NewtStore):
        from newt.pipeline import missing_stages

        stages = missing_stages(recipe, store.open())
        if not stages:
            return dg.SkipReason(
                f"every stage of {recipe.name} is committed under its current key; nothing to do"
            )
        context.log.info(f"{recipe.name}: stale or missing stages: {', '.join(stages)}")
        return dg.RunRequest(
            asset_selection=[dg.AssetKey([recipe.name, s]) for s in stages],
            tags={"newt/trigger": "schedule", "newt/stages": ",".join(stages)},
        )

    return [_schedule]
