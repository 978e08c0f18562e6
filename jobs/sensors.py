"""Data sensors: one per dataset source of a recipe; a new content version of the source starts the recipe's job.

The sensor asks `newt.sources.source_version` — the same content version that keys the `dataset` stage (sha256 of
local bytes, ETag/md5/generation of objects, commit of hub datasets) — and keeps the last one in its cursor. The
first evaluation only records the version (starting the UI must not start a training run); every later change
requests one run, keyed by the (old, new) versions so one change never triggers twice. Each new version is also
recorded as an observation of the source asset (`<recipe>/source_<i>`), so the UI shows it without anyone
observing the source by hand. The run materializes the whole job:
stages whose keys did not change (there are none downstream of new data, but an unrelated recipe edit might
already be built) return at once as cache hits.
"""

from __future__ import annotations

import json

import dagster as dg

if __package__.startswith("newt_dagster."):  # installed from the wheel (pyproject.toml's package-dir)
    from ..assets.sources import source_observation
else:  # a checkout: top-level packages beside newt/
    from assets.sources import source_observation
from newt.config import Recipe

MIN_INTERVAL_S = 60  # a version check is one stat/HEAD per file; once a minute is plenty for training data


def recipe_sensors(recipe: Recipe) -> list[dg.SensorDefinition]:
    return [_source_sensor(recipe, i) for i in range(len(recipe.datasets))]


def _source_sensor(recipe: Recipe, index: int) -> dg.SensorDefinition:
    spec = recipe.datasets[index]
    key_path = f"datasets[{index}]"

    @dg.sensor(
        name=f"{recipe.name}_source_{index}_sensor",
        job_name=f"{recipe.name}_job",
        minimum_interval_seconds=MIN_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts {recipe.name}_job when the content version of {key_path} ({spec.path}) changes.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        from newt.sources import source_version

        version = source_version(spec, key_path=key_path)
        current = {"kind": version["kind"], "version": version["version"]}
        previous = json.loads(context.cursor) if context.cursor else None
        if previous == current:
            return dg.SkipReason(
                f"{key_path} ({spec.path}) unchanged: {current['kind']} {current['version']}"
            )
        # A new (or first seen) version is recorded as an observation of the source asset: the UI shows the
        # source's current content version, and the recipe's assets as Unsynced once it differs from what they
        # were built from.
        observed = [source_observation(recipe, index, version)]
        cursor = json.dumps(current, sort_keys=True)
        if previous is None:
            return dg.SensorResult(asset_events=observed, cursor=cursor, skip_reason=dg.SkipReason(
                f"first look at {key_path} ({spec.path}): recorded {current['kind']} "
                f"{current['version']}; a later change starts {recipe.name}_job"
            ))
        return dg.SensorResult(asset_events=observed, cursor=cursor, run_requests=[dg.RunRequest(
            run_key=f"{key_path}:{previous['version']}->{current['version']}",
            tags={"newt/trigger": "data", "newt/source": key_path},
        )])

    return _sensor
