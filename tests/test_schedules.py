"""Scheduled retraining and data sensors, evaluated with Dagster's test contexts, plus one real scheduled run."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

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


@pytest.mark.slow
def test_schedule_requests_only_missing_stages_and_a_real_run_builds_them(
    tiny_recipe_file, tmp_path: Path
) -> None:
    store = NewtStore(root=str(tmp_path / "store"))
    recipe_file = tiny_recipe_file(extra=SCHEDULE)
    defs = build_definitions(recipe_file.parent, store)
    schedule = defs.resolve_schedule_def("tiny_retrain_schedule")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "tiny_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        with dg.build_schedule_context(instance=instance, resources={"store": store}) as context:
            return schedule(context)

    first = tick()
    assert requested_stages(first) == ALL  # nothing built yet: everything is missing
    assert first.tags["newt/trigger"] == "schedule"

    # the real run a tick launches: the recipe's job, restricted to the requested assets
    job = defs.resolve_job_def("tiny_job")
    result = job.execute_in_process(instance=instance, asset_selection=first.asset_selection, tags=first.tags)
    assert result.success
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == set(ALL)

    # an unchanged world: the tick plans (seconds) and skips
    second = tick()
    assert isinstance(second, dg.SkipReason) and "nothing to do" in second.skip_message

    # a changed merge dtype: only `merged` and what is downstream of it are stale
    recipe_file.write_text(recipe_file.read_text() + "merge: {dtype: bfloat16}\n")
    changed = build_definitions(recipe_file.parent, store).resolve_schedule_def("tiny_retrain_schedule")
    with dg.build_schedule_context(instance=instance, resources={"store": store}) as context:
        assert requested_stages(changed(context)) == ["merged", "quantized", "evaluation"]


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
