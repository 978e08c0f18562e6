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
