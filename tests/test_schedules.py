"""Scheduled retraining and data sensors, evaluated with Dagster's test contexts, plus one real scheduled run."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from tiny_run import tiny_run

from definitions import build_definitions
from newt.config import load_recipe
from resources import NewtStore

SCHEDULE = 'schedule: "0 3 * * 1"\n'
ALL = ["dataset", "prepared", "trained", "merged", "quantized", "evaluation"]


def requested_stages(result) -> list[str] | None:
    if isinstance(result, dg.SkipReason):
        return None
    return [k.path[-1] for k in result.asset_selection]


def test_a_recipe_without_schedule_gets_none_and_a_bad_cron_is_a_recipe_error(
    tiny_recipe_file, tmp_path
) -> None:
    defs = build_definitions(tiny_recipe_file().parent, NewtStore(root=str(tmp_path / "store")))
    assert not list(defs.schedules or [])
    assert [s.name for s in defs.sensors] == ["tiny_source_0_sensor"]
    from newt.config import RecipeError

    with pytest.raises(RecipeError, match="schedule: got 'weekly'; expected a cron expression with 5 fields"):
        load_recipe(tiny_recipe_file(name="bad", extra="schedule: weekly\n"))


def tick(schedule: dg.ScheduleDefinition, store: NewtStore, instance: dg.DagsterInstance):
    with dg.build_schedule_context(instance=instance, resources={"store": store}) as context:
        return schedule(context)


@pytest.mark.slow
def test_schedule_requests_only_missing_stages_and_a_real_run_builds_them(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    run = tiny_run()  # the session's tiny recipe, materialized once by `newt run` (tests/tiny_run.py)
    assert run.rc == 0, run.stderr[-3000:]
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe_file = recipes / run.recipe.name  # same recipe (tiny), now with a schedule
    recipe_file.write_text(run.recipe.read_text() + SCHEDULE)

    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "empty")))
    schedule = defs.resolve_schedule_def("tiny_retrain_schedule")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "tiny_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    first = tick(schedule, NewtStore(root=str(tmp_path / "empty")), instance)
    assert requested_stages(first) == ALL  # nothing built in an empty store: everything is missing
    assert first.tags["newt/trigger"] == "schedule"

    # the built world, unchanged: the tick plans (seconds) and skips
    store = NewtStore(root=str(run.store))
    unchanged = tick(schedule, store, instance)
    assert isinstance(unchanged, dg.SkipReason) and "nothing to do" in unchanged.skip_message

    # a changed merge dtype: only `merged` and what is downstream of it are stale ...
    recipe_file.write_text(recipe_file.read_text() + "merge: {dtype: bfloat16}\n")
    defs = build_definitions(recipes, store)
    changed = tick(defs.resolve_schedule_def("tiny_retrain_schedule"), store, instance)
    assert requested_stages(changed) == ["merged", "quantized", "evaluation"]

    # ... and the real run that tick launches (the recipe's job, restricted to those assets) builds just them
    job = defs.resolve_job_def("tiny_job")
    result = job.execute_in_process(
        instance=instance, asset_selection=changed.asset_selection, tags=changed.tags
    )
    assert result.success
    built = {
        e.asset_key.path[-1]: e.materialization.metadata["cache"].value
        for e in result.get_asset_materialization_events()
    }
    assert built == {"merged": "miss", "quantized": "miss", "evaluation": "miss"}
    assert isinstance(
        tick(defs.resolve_schedule_def("tiny_retrain_schedule"), store, instance), dg.SkipReason
    )


def test_data_sensor_records_first_then_starts_the_job_on_a_new_version(
    tiny_recipe_file, tmp_path: Path
) -> None:
    recipe_file = tiny_recipe_file()
    defs = build_definitions(recipe_file.parent, NewtStore(root=str(tmp_path / "store")))
    sensor = defs.resolve_sensor_def("tiny_source_0_sensor")
    assert sensor.job_name == "tiny_job"
    instance = dg.DagsterInstance.ephemeral()
    data = Path(load_recipe(recipe_file).datasets[0].path)

    def evaluate(cursor: str | None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor)
        return sensor.evaluate_tick(context)

    first = evaluate(None)
    assert not first.run_requests and "first look at datasets[0]" in first.skip_message
    cursor = first.cursor
    assert json.loads(cursor)["kind"] == "sha256"

    unchanged = evaluate(cursor)
    assert not unchanged.run_requests and "unchanged" in unchanged.skip_message
    assert unchanged.cursor == cursor

    with data.open("a") as f:  # new rows arrive
        f.write(data.read_text().splitlines()[0] + "\n")
    changed = evaluate(cursor)
    [request] = changed.run_requests
    assert request.tags["newt/trigger"] == "data" and request.tags["newt/source"] == "datasets[0]"
    old, new = json.loads(cursor)["version"], json.loads(changed.cursor)["version"]
    assert old != new and request.run_key == f"datasets[0]:{old}->{new}"
    assert not evaluate(changed.cursor).run_requests
