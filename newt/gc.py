"""`newt gc`: remove the store's artifacts that no recipe's current plan references.

    newt gc [RECIPE|FOLDER ...]      what would be removed (a dry run: nothing is deleted)
    newt gc --yes [RECIPE|FOLDER ...]  remove it

The recipes (files, or folders of *.yaml / *.yml; default NEWT_RECIPES or ./recipes) are planned as they stand
now (`newt.pipeline.plan`); every key of every node of every recipe is kept, and so is the work folder of such a
key (a crashed training run resumes from its checkpoints there). Everything else under the store's stage folders
goes: committed artifacts of old keys, and work folders of old keys. Two things are never removed, checked under
the key's lock (`Store.unused`): an artifact a running build reads (builds hold a shared lock on their inputs),
and a work folder whose writer is still at work (it holds the exclusive lock). A recipe that cannot be planned
stops gc before anything is deleted: a key it would have kept is unknown.

Locks are per machine (flock): on an object store another machine's build is not seen. Run gc there when no
other machine builds into the same store.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from newt import STAGES
from newt.cache import MARKER, Store

WORK_PREFIX = ".work-"


@dataclass
class Entry:
    stage: str
    key: str
    path: str  # in the store's filesystem
    committed: bool
    size: int


def recipe_files(targets: list[str]) -> list[Path]:
    if not targets:
        targets = [os.environ.get("NEWT_RECIPES") or "recipes"]
    files: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"newt gc: {target}: no recipe file or folder there; give the recipes whose "
                                    "artifacts to keep (files or folders)")
    if not files:
        raise FileNotFoundError(f"newt gc: no recipe in {', '.join(targets)}; gc keeps what recipes reference, "
                                "so it needs at least one (it would delete everything)")
    return files


def referenced(files: list[Path]) -> set[tuple[str, str]]:
    """(stage, key) of every node of every recipe's current plan."""
    from newt.config import load_recipe
    from newt.pipeline import plan

    keep: set[tuple[str, str]] = set()
    for file in files:
        for info in plan(load_recipe(file)).values():
            keep.add((info.stage, info.key))
    return keep


def entries(store: Store) -> list[Entry]:
    """Every committed artifact and work folder under the store's stage folders."""
    out = []
    for stage in STAGES:
        base = store.path(stage, "_").rsplit("/", 1)[0]
        try:
            listed = store.fs.ls(base, detail=True)
        except FileNotFoundError:
            continue
        for info in listed:
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") != "directory":
                continue
            work = name.startswith(WORK_PREFIX)
            key = name[len(WORK_PREFIX):] if work else name
            size = sum(f.get("size") or 0 for f in store.fs.find(info["name"], detail=True).values())
            committed = not work and store.fs.exists(f"{info['name'].rstrip('/')}/{MARKER}")
            out.append(Entry(stage, key, str(info["name"]), committed, size))
    # Object stores keep work folders in the local cache (Store.workdir): those are this machine's only.
    return out


def collect(store: Store, keep: set[tuple[str, str]], delete: bool) -> tuple[list[Entry], list[Entry]]:
    """(removed or to remove, kept because in use now) among the entries no plan references."""
    gone, busy = [], []
    for entry in entries(store):
        if (entry.stage, entry.key) in keep:
            continue
        with store.unused(entry.stage, entry.key) as free:
            if not free:
                busy.append(entry)
                continue
            if delete:
                store.fs.rm(entry.path, recursive=True)
            gone.append(entry)
    return gone, busy


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_gc(args: argparse.Namespace) -> int:
    from newt.cache import store_from_env

    store = store_from_env()
    files = recipe_files(args.targets)
    keep = referenced(files)
    gone, busy = collect(store, keep, delete=args.yes)
    verb = "removed" if args.yes else "would remove"
    print(f"newt gc: store {store.root}; keeping {len(keep)} artifact key(s) of {len(files)} recipe(s)")
    for e in gone:
        kind = "artifact" if e.committed else "work folder"
        print(f"  {verb} {e.stage}/{e.key} ({kind}, {_size(e.size)})")
    for e in busy:
        print(f"  kept {e.stage}/{e.key}: a running build holds it")
    total = sum(e.size for e in gone)
    print(f"newt gc: {verb} {len(gone)} folder(s), {_size(total)}"
          + ("" if args.yes or not gone else "; run with --yes to delete them"), file=sys.stderr)
    return 0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gc", help="remove store artifacts no recipe references (dry run unless --yes)",
                       parents=parents)
    p.add_argument("targets", nargs="*", metavar="RECIPE|FOLDER",
                   help="recipes whose artifacts to keep (default: NEWT_RECIPES or ./recipes)")
    p.add_argument("--yes", action="store_true", help="delete (default: only list what would go)")
    p.set_defaults(fn=cmd_gc)
