"""One job per recipe (its whole asset group), its retraining schedule and its data sensors."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from .schedules import recipe_schedules
from .sensors import recipe_sensors
from .tags import run_tags
from newt.config import Recipe

__all__ = ["job_name", "recipe_job", "recipe_schedules", "recipe_sensors"]


def job_name(recipe: Recipe) -> str:
    return f"{recipe.name}_job"


def recipe_job(recipe: Recipe, code_dir: Path | None = None) -> dg.UnresolvedAssetJobDefinition:
    """`code_dir`: the code location's folder, whose git commit the runs are tagged with (jobs/tags.py)."""
    return dg.define_asset_job(
        name=job_name(recipe),
        selection=dg.AssetSelection.groups(recipe.name),
        description=f"Materialize every stage of recipe {recipe.name}; unchanged stages are cache hits.",
        run_tags=run_tags(recipe, code_dir),
    )
