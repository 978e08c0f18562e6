"""The `newt` command line: work with recipes without the UI.

    newt validate RECIPE     load and check a recipe; every problem at once
    newt plan RECIPE         each stage's cache key, hit or miss, and where its artifact is
"""

from __future__ import annotations

import argparse
import os
import sys

from newt import STAGES


def _store():
    from newt.cache import Store
    from newt.sources import resolve_storage_options
    import json

    options = json.loads(os.environ.get("NEWT_STORE_OPTIONS") or "{}")
    return Store(os.environ.get("NEWT_STORE") or ".newt/store", resolve_storage_options(options, "NEWT_STORE_OPTIONS"))


def cmd_validate(args: argparse.Namespace) -> int:
    from newt.config import load_recipe

    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: ok (recipe {recipe.name}, base_model {recipe.base_model}, {len(recipe.datasets)} dataset(s))")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from newt.config import load_recipe
    from newt.pipeline import plan

    recipe = load_recipe(args.recipe)
    store = _store()
    keys = plan(recipe)
    width = max(len(s) for s in STAGES)
    for stage in STAGES:
        found = store.lookup(stage, keys[stage].key)
        print(f"{stage:<{width}}  {found.status:<7} {keys[stage].key}  {found.uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="newt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (("validate", cmd_validate, "check a recipe"), ("plan", cmd_plan, "show stage keys")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    from newt.config import RecipeError

    try:
        return args.fn(args)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
