"""The Dagster code location: every recipes/*.yaml becomes an asset group and a job.

NEWT_RECIPES overrides the recipes folder; NEWT_STORE / NEWT_STORE_OPTIONS the artifact store.
"""

import os
from pathlib import Path

import dagster as dg

from newt.config import check_unique_names, load_recipe

if (__package__ or "").startswith("newt_dagster"):  # installed from the wheel: see pyproject.toml's package-dir
    from .assets import recipe_assets
    from .jobs import recipe_job, recipe_schedules, recipe_sensors
    from .resources import NewtStore, launcher_from_env
else:  # a checkout: the Dagster layer's packages sit top-level beside newt/
    from assets import recipe_assets
    from jobs import recipe_job, recipe_schedules, recipe_sensors
    from resources import NewtStore, launcher_from_env

RECIPES = Path(os.environ.get("NEWT_RECIPES") or Path(__file__).parent / "recipes")


def build_definitions(
    recipes_dir: Path = RECIPES, store: NewtStore | None = None, recipe_files: list[Path] | None = None
) -> dg.Definitions:
    """`recipe_files` (what `newt run FILE` passes) replaces the folder's recipes with just those files."""
    if recipe_files is None:
        recipe_files = sorted([*recipes_dir.glob("*.yaml"), *recipes_dir.glob("*.yml")])
    recipes = [load_recipe(p) for p in recipe_files]
    check_unique_names(recipes)  # group names are derived from file names (lora-1b.yml → lora_1b)
    return dg.Definitions(
        assets=[a for r in recipes for a in recipe_assets(r)],
        jobs=[recipe_job(r, Path(__file__).parent) for r in recipes],
        schedules=[s for r in recipes for s in recipe_schedules(r)],
        sensors=[s for r in recipes for s in recipe_sensors(r)],
        resources={"store": store or NewtStore.from_env(), "launcher": launcher_from_env()},
    )


defs = build_definitions()
