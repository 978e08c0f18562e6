"""External data as Dagster observable source assets: one per dataset source of a recipe, `<recipe>/source_<i>`.

Observing a source reports its content version (`newt.sources.source_version`: sha256 of local bytes, ETag/md5/
generation of objects, commit of hub datasets) as the asset's data version — the same version that keys the
`dataset` stage. The recipe's `dataset` asset depends on them, so when a file is replaced the UI shows the upstream
data as changed and the recipe's assets as Unsynced. Nothing is downloaded to observe.
"""

from __future__ import annotations

import dagster as dg

from .presentation import recipe_link, recipe_reference
from newt.config import Recipe

# The tag an observation carries its data version in (what an `ObserveResult(data_version=...)` becomes, and what
# the UI and `get_latest_data_version_record` read); a sensor records observations as plain `AssetObservation`s.
DATA_VERSION_TAG = "dagster/data_version"


def source_asset_key(recipe_name: str, index: int) -> dg.AssetKey:
    return dg.AssetKey([recipe_name, f"source_{index}"])


def source_asset_keys(recipe: Recipe) -> list[dg.AssetKey]:
    return [source_asset_key(recipe.name, i) for i in range(len(recipe.datasets))]


def source_assets(recipe: Recipe) -> list[dg.SourceAsset]:
    return [_source_asset(recipe, i) for i in range(len(recipe.datasets))]


def _source_asset(recipe: Recipe, index: int) -> dg.SourceAsset:
    spec = recipe.datasets[index]
    key_path = f"datasets[{index}]"

    @dg.observable_source_asset(
        key=source_asset_key(recipe.name, index),
        group_name=recipe.name,
        description=f"{key_path}: {spec.path} (content version) {recipe_link(recipe)}",
        metadata=recipe_reference(recipe),
        kinds={"newt", "huggingface"},
    )
    def _observe() -> dg.ObserveResult:
        from newt.sources import source_version

        version = source_version(spec, key_path=key_path)
        return dg.ObserveResult(data_version=dg.DataVersion(version["version"]), metadata=version_metadata(version))

    return _observe


def version_metadata(version: dict) -> dict:
    from newt.sources import redact_url

    return {"uri": redact_url(version["uri"]), "kind": version["kind"], "files": len(version["files"])}


def source_observation(recipe: Recipe, index: int, version: dict) -> dg.AssetObservation:
    """The observation a sensor records for a source: the same data version and metadata as observing it."""
    return dg.AssetObservation(asset_key=source_asset_key(recipe.name, index), metadata=version_metadata(version),
                               tags={DATA_VERSION_TAG: version["version"]})
