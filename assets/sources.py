"""External data as Dagster observable source assets: one per dataset source of a recipe, `<recipe>/source_<i>`.

Observing a source reports its content version (`newt.sources.source_version`: sha256 of local bytes, ETag/md5/
generation of objects, commit of hub datasets) as the asset's data version — the same version that keys the
`dataset` stage. The recipe's `dataset` asset depends on them, so when a file is replaced the UI shows the upstream
data as changed and the recipe's assets as Unsynced. Nothing is downloaded to observe.
"""

from __future__ import annotations

import dagster as dg

from newt.config import Recipe


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
        description=f"{key_path} of recipe {recipe.source or recipe.name}: {spec.path} (content version)",
        kinds={"newt"},
    )
    def _observe() -> dg.ObserveResult:
        from newt.sources import redact_url, source_version

        version = source_version(spec, key_path=key_path)
        return dg.ObserveResult(
            data_version=dg.DataVersion(version["version"]),
            metadata={"uri": redact_url(version["uri"]), "kind": version["kind"], "files": len(version["files"])},
        )

    return _observe
