"""One job per recipe: materialize its whole asset group."""

from __future__ import annotations

import dagster as dg

from newt.config import Recipe


def recipe_job(recipe: Recipe) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=f"{recipe.name}_job",
        selection=dg.AssetSelection.groups(recipe.name),
        description=f"Materialize every stage of recipe {recipe.name}; unchanged stages are cache hits.",
    )
