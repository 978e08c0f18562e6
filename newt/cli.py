"""The `newt` command line: work with recipes without the UI.

    newt validate RECIPE     load and check a recipe (newt or Axolotl YAML); every problem at once
    newt plan RECIPE         per stage: cache hit or miss, and for a miss which key inputs changed since the
                             recipe's last committed artifact of that stage
    newt preview RECIPE      the first rows as the model sees them: trained tokens in color, masked ones dim
    newt run RECIPE          materialize the recipe's six stages in this process, with progress; exit code 1
                             when a step or an evaluation gate fails
    newt chat RECIPE         talk to a built stage's model (--stage, --prompt, --image); builds nothing
    newt ui                  the Dagster UI (dagster dev) on 127.0.0.1
    newt gc [RECIPES]        remove store artifacts no recipe's current plan references (dry run unless --yes)

`run` and `ui` need Dagster: they live in the Dagster layer (jobs/cli.py) and this module hands them over, so the
core never imports dagster. A failure prints newt's own message with its fix; `--debug` adds the traceback.
Ctrl-C and SIGTERM stop a run with one line and exit status 130 / 143.

RECIPE is a YAML file anywhere; its file stem names the recipe (the asset group). The store is NEWT_STORE
(default .newt/store) with NEWT_STORE_OPTIONS; run history goes to DAGSTER_HOME when it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from newt import STAGES
from newt import IGNORE_INDEX as IGNORE

ROOT = Path(__file__).resolve().parents[1]  # a checkout (definitions.py, assets/, jobs/) or site-packages


def _store():
    from newt.cache import store_from_env

    return store_from_env()


def _color(stream: TextIO, no_color: bool) -> bool:
    return not no_color and not os.environ.get("NO_COLOR") and stream.isatty()


# --- validate --------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from newt.config import RecipeError, load_recipe
    from newt.validate import problems

    recipe = load_recipe(args.recipe)
    found = problems(recipe)  # data files, first rows, template names, roles: everything short of training
    if found:
        raise RecipeError(args.recipe, found)
    print(
        f"{args.recipe}: ok (recipe {recipe.name}, base_model {recipe.base_model}, {len(recipe.datasets)} dataset(s))"
    )
    for note in recipe.notes:  # how Axolotl spellings were read: accepted, never silently
        print(f"  note: {note}")
    return 0


# --- plan ------------------------------------------------------------------------------------------------------


def previous_manifest(store: Any, stage: str, recipe_name: str) -> dict[str, Any] | None:
    """The latest committed manifest of `stage` built for the recipe named `recipe_name` (None if there is none)."""
    base = store.path(stage, "_").rsplit("/", 1)[0]
    try:
        entries = store.fs.ls(base, detail=False)
    except FileNotFoundError:
        return None
    best: dict[str, Any] | None = None
    for entry in entries:
        key = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if key.startswith("."):  # work folders of running or crashed builds
            continue
        found = store.lookup(stage, key)
        if not found.hit or found.manifest.get("metadata", {}).get("recipe") != recipe_name:
            continue
        if best is None or found.manifest.get("committed_at", "") > best.get("committed_at", ""):
            best = found.manifest
    return best


def diff_inputs(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old, new) for every leaf that differs between two key-input trees; `<absent>` marks a side."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            out.extend(diff_inputs(old.get(k, "<absent>"), new.get(k, "<absent>"), sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in diff_inputs(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{20,}", value):
        return value[:12] + "…"
    return text if len(text) <= 60 else text[:57] + "…"


def cmd_plan(args: argparse.Namespace) -> int:
    from newt.config import load_recipe
    from newt.pipeline import nodes, plan

    recipe = load_recipe(args.recipe)
    store = _store()
    keys = plan(recipe)
    width = max(len(s) for s in nodes(recipe))
    print(f"recipe {recipe.name} ({args.recipe}); store {store.root}")
    for stage in nodes(recipe):  # the six stages plus quantized_<method> for each further quantize output
        info = keys[stage]
        found = store.lookup(info.stage, info.key)
        print(f"{stage:<{width}}  {found.status:<7} {info.key}  {found.uri if found.hit else ''}".rstrip())
        if found.hit:
            continue
        if found.status == "corrupt":
            print(f"{'':<{width}}    {found.reason}; it will be rebuilt")
        before = previous_manifest(store, info.stage, recipe.name)
        if before is None:
            print(f"{'':<{width}}    never built for recipe {recipe.name}")
            continue
        changes = diff_inputs(before.get("inputs", {}), info.inputs)
        print(f"{'':<{width}}    changed since {before['key'][:12]}… ({before.get('committed_at', '?')}):")
        for path, old, new in changes:
            if path == "code_version" and len(changes) > 1:
                continue  # the module and library lines say why it changed
            path = path.replace("code.modules.", "module ", 1).replace("code.libraries.", "library ", 1)
            print(f"{'':<{width}}      {path}: {_short(old)} → {_short(new)}")
    return 0


# --- preview ---------------------------------------------------------------------------------------------------

from newt.preview import render_row  # noqa: E402,F401 - the preview's row renderer, importable from here as before


def cmd_preview(args: argparse.Namespace) -> int:
    from newt.config import load_recipe
    from newt.preview import preview

    recipe = load_recipe(args.recipe)
    return preview(recipe, _store(), rows=args.rows, split=args.split, color=_color(sys.stdout, args.no_color))


# --- run, ui: the verbs that need Dagster live in the Dagster layer (jobs/cli.py) -------------------------------


def dagster_verbs() -> Any:
    """The Dagster layer's verbs: the checkout's `jobs/cli.py` when this file sits in a checkout, else the
    installed wheel's `newt_dagster.jobs.cli` (pyproject.toml). The core never imports dagster itself."""
    import importlib

    if (ROOT / "workspace.yaml").is_file() and (ROOT / "definitions.py").is_file():
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        return importlib.import_module("jobs.cli")
    return importlib.import_module("newt_dagster.jobs.cli")


def cmd_run(args: argparse.Namespace) -> int:
    from newt.config import load_recipe

    load_recipe(args.recipe)  # recipe errors before Dagster is imported (seconds)
    return dagster_verbs().cmd_run(args)


# --- chat ------------------------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from newt import chat
    from newt.config import load_recipe

    recipe = load_recipe(args.recipe)
    try:
        return chat.run(recipe, args.stage, _store(), prompt=args.prompt, image=args.image,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    except chat.ChatError as exc:
        print(f"newt chat: {exc}", file=sys.stderr)
        return 1


# --- ui --------------------------------------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    return dagster_verbs().cmd_ui(args)


# --- entry point -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="newt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error, not only newt's message")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a recipe", parents=[common])
    p.add_argument("recipe")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("plan", help="per stage: hit or miss, and what changed since the last artifact",
                       parents=[common])
    p.add_argument("recipe")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("preview", help="trained and masked tokens of the first rows", parents=[common])
    p.add_argument("recipe")
    p.add_argument("-n", "--rows", type=int, default=3, help="rows to show (default 3)")
    p.add_argument("--split", choices=("train", "validation"), default="train")
    p.add_argument("--no-color", action="store_true", help="mark trained text with ⟦…⟧ instead of colors")
    p.set_defaults(fn=cmd_preview)
    p = sub.add_parser("run", help="materialize the recipe in this process (no UI)", parents=[common])
    p.add_argument("recipe")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("chat", help="talk to a stage's model (streams; --prompt answers once)",
                       parents=[common])
    p.add_argument("recipe")
    p.add_argument("--stage", default="merged", help="base, trained, merged (default), quantized or quantized_<method>")
    p.add_argument("--prompt", help="answer this one message and exit (default: an interactive loop)")
    p.add_argument("--image", help="image file sent with the first message (vision-language recipes)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
    p.set_defaults(fn=cmd_chat)
    p = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1", parents=[common])
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--recipes", help="recipes folder (default: NEWT_RECIPES or the checkout's recipes/)")
    p.set_defaults(fn=cmd_ui)
    from newt.gc import add_parser as add_gc

    add_gc(sub, parents=[common])
    args = parser.parse_args(argv)
    from newt.config import RecipeError
    from newt.errors import Interrupted, interrupted_by, show, watching_signals

    with watching_signals():
        try:
            return args.fn(args)
        except Interrupted as exc:  # a run stopped by Ctrl-C or SIGTERM: one line, the shell's exit status
            print(exc, file=sys.stderr)
            return exc.code
        except KeyboardInterrupt:
            sig = interrupted_by() or signal.SIGINT
            print(f"newt {args.command}: stopped by {signal.Signals(sig).name}", file=sys.stderr)
            return 128 + sig
        except Exception as exc:  # noqa: BLE001 - every failure is shown as newt's message (--debug: traceback)
            show(exc, sys.stderr, args.debug)
            return 2 if isinstance(exc, RecipeError) else 1


if __name__ == "__main__":
    sys.exit(main())
