"""Observable source assets: each dataset source reports its content version; replacing the file changes it."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from dagster._core.definitions.observe import observe  # not re-exported at the top level in Dagster 1.13

from assets.sources import source_asset_key, source_assets
from newt.config import load_recipe
from newt.sources import source_version


def test_replacing_the_file_changes_the_observed_version(tiny_recipe_file) -> None:
    recipe = load_recipe(tiny_recipe_file())
    assets = source_assets(recipe)
    assert [a.key for a in assets] == [source_asset_key("tiny", 0)] == [dg.AssetKey(["tiny", "source_0"])]
    with dg.instance_for_test() as instance:
        def observed() -> str:
            assert observe(assets, instance=instance).success
            record = instance.get_latest_data_version_record(assets[0].key, is_source=True)
            return record.asset_observation.data_version

        first = observed()
        assert first == source_version(recipe.datasets[0])["version"]
        assert observed() == first  # unchanged bytes, unchanged version
        data = Path(recipe.datasets[0].path)
        data.write_text(data.read_text() + json.dumps({"messages": [{"role": "user", "content": "ab"},
                                                                    {"role": "assistant", "content": "ba"}]}) + "\n")
        assert observed() != first


def test_the_data_sensor_records_observations_and_the_recipe_goes_unsynced(tiny_recipe_file, tmp_path) -> None:
    from definitions import build_definitions
    from resources import NewtStore

    recipe_file = tiny_recipe_file()
    recipe = load_recipe(recipe_file)
    defs = build_definitions(recipe_file.parent, NewtStore(root=str(tmp_path / "store")))
    sensor = defs.resolve_sensor_def("tiny_source_0_sensor")
    key = source_asset_key("tiny", 0)
    with dg.instance_for_test() as instance:
        def tick(cursor: str | None):
            result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
            for event in result.asset_events:  # what the sensor daemon does with a tick's asset events
                instance.report_runless_asset_event(event)
            return result

        def observed() -> str | None:
            record = instance.get_latest_data_version_record(key, is_source=True)
            return record.asset_observation.data_version if record else None

        assert observed() is None
        first = tick(None)
        assert not first.run_requests and observed() == source_version(recipe.datasets[0])["version"]
        # the dataset stage built from that version records it as its input version
        dataset = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and dg.AssetKey(["tiny", "dataset"])
                   in a.keys]
        built = dg.materialize(dataset, resources=defs.resources, instance=instance, selection=dataset)
        [materialization] = built.get_asset_materialization_events()
        input_tag = f"dagster/input_data_version/{key.to_user_string()}"
        assert materialization.materialization.tags[input_tag] == observed()
        assert len(tick(first.cursor).asset_events) == 0  # unchanged: nothing new to record

        data = Path(recipe.datasets[0].path)
        data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
        changed = tick(first.cursor)
        assert len(changed.run_requests) == 1
        new = source_version(recipe.datasets[0])["version"]
        assert observed() == new != materialization.materialization.tags[input_tag]  # the UI: dataset Unsynced
