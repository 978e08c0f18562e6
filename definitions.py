"""The Dagster code location: every recipes/*.yaml becomes an asset group and a job.

NEWT_RECIPES overrides the recipes folder; NEWT_STORE / NEWT_STORE_OPTIONS the artifact store.
"""

import os
from pathlib import Path

import dagster as dg

from assets import recipe_assets
from jobs import recipe_job
from newt.config import load_recipe
from resources import NewtStore

RECIPES = Path(os.environ.get("NEWT_RECIPES") or Path(__file__).parent / "recipes")


def build_definitions(recipes_dir: Path = RECIPES, store: NewtStore | None = None) -> dg.Definitions:
    recipes = [load_recipe(p) for p in sorted(recipes_dir.glob("*.yaml"))]
    return dg.Definitions(
        assets=[a for r in recipes for a in recipe_assets(r)],
        jobs=[recipe_job(r) for r in recipes],
        resources={"store": store or NewtStore.from_env(), "pipes": dg.PipesSubprocessClient()},
    )


defs = build_definitions()
