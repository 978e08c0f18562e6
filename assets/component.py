"""newt in someone else's Dagster project: a component whose `defs.yaml` names a recipe (or holds one inline) and
builds the same asset group, job, schedule and sensors as newt's own code location (definitions.py).

    # <project>/src/<project>/defs/sft_demo/defs.yaml
    type: assets.component.NewtRecipe
    attributes:
      recipe: recipe.yaml            # relative to this folder; or an absolute path
      # store: s3://bucket/newt      # optional; default NEWT_STORE (then .newt/store)

    # an inline recipe: `recipe` is the mapping itself, `name` the group's name (default: the folder's name)
    type: assets.component.NewtRecipe
    attributes:
      name: dpo_demo
      recipe:
        base_model: builtin:tiny-llama
        datasets: [{path: /data/pairs.jsonl}]
        rl: dpo

Each component contributes the `store` and `launcher` resources too. Dagster merges the components' definitions
only when every resource key names the same object, so components with the same `store` get the same resource
object (`_shared`); two components naming different stores cannot live in one code location (Dagster then
refuses to merge them: "different resources with same key 'store'").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from newt.config import Recipe


class NewtRecipe(dg.Component, dg.Resolvable, dg.Model):
    """One newt recipe as an asset group with its job, retraining schedule and data sensors."""

    recipe: str | dict[str, Any]
    name: str | None = None
    store: str | None = None

    def load_recipe(self, folder: Path) -> Recipe:
        """The recipe: a file (relative paths from the component's folder) or the inline mapping."""
        from newt.config import load_recipe, parse_recipe

        if isinstance(self.recipe, str):
            path = Path(self.recipe).expanduser()
            path = path if path.is_absolute() else folder / path
            recipe = load_recipe(path)
            if self.name and self.name != recipe.name:
                raise ValueError(f"{folder / 'defs.yaml'}: name {self.name!r} differs from the recipe file's name "
                                 f"{recipe.name!r} (the file name decides it); drop `name` or rename the file")
            return recipe
        import yaml

        return parse_recipe(yaml.safe_dump(self.recipe, sort_keys=False), source=str(folder / "defs.yaml"),
                            name=self.name or folder.name)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if __package__.startswith("newt_dagster."):  # installed from the wheel (pyproject.toml's package-dir)
            from ..jobs import recipe_job, recipe_schedules, recipe_sensors
            from ..resources import NewtStore, launcher_from_env
            from . import recipe_assets
        else:  # a checkout: top-level packages beside newt/
            from assets import recipe_assets
            from jobs import recipe_job, recipe_schedules, recipe_sensors
            from resources import NewtStore, launcher_from_env

        recipe = self.load_recipe(context.path)
        store = _shared(("store", self.store), lambda: NewtStore(root=self.store) if self.store else NewtStore.from_env())
        return dg.Definitions(
            assets=recipe_assets(recipe),
            jobs=[recipe_job(recipe, context.path)],
            schedules=recipe_schedules(recipe),
            sensors=recipe_sensors(recipe),
            resources={"store": store, "launcher": _shared(("launcher", None), launcher_from_env)},
        )


# (kind, setting) → the one resource object the components of this process share
_RESOURCES: dict[tuple[str, str | None], Any] = {}


def _shared(key: tuple[str, str | None], make: Any) -> Any:
    if key not in _RESOURCES:
        _RESOURCES[key] = make()
    return _RESOURCES[key]
