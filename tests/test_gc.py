"""`newt gc` (newt/gc.py): a dry run lists, `--yes` deletes exactly the store folders no recipe's current plan
references, and never one a running build holds (an input it reads, a work folder its writer is filling).

The artifacts are committed directly with `Store.commit` (one small file each): gc decides by keys and locks,
never by content, so nothing needs to be built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from newt.cache import Store
from newt.cli import main
from newt.config import load_recipe
from newt.pipeline import plan
from newt.synthetic import write_reversal_jsonl


def commit(store: Store, stage: str, key: str) -> Path:
    work = store.workdir(stage, key)
    (work / "payload.txt").write_text(f"{stage} {key}")
    store.commit(stage, key, work, {"stage": stage}, {"recipe": "gc"})
    return Path(store.path(stage, key))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    data = write_reversal_jsonl(tmp_path / "data.jsonl", n=8)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = recipes / "keep.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": "builtin:tiny-llama", "datasets": [{"path": str(data)}]}))
    store = Store(str(tmp_path / "store"))
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    keys = plan(load_recipe(recipe))
    kept = {node: commit(store, info.stage, info.key) for node, info in keys.items() if node in ("dataset", "prepared")}
    old = {name: commit(store, "prepared", name * 32) for name in ("a", "b")}  # keys of edits long gone
    stray = store.workdir("trained", "c" * 32)  # a crashed build's work folder, nobody writing
    (stray / "checkpoint.bin").write_bytes(b"x" * 100)
    resumable = store.workdir("trained", keys["trained"].key)  # the current key's checkpoints: resume from them
    (resumable / "checkpoint.bin").write_bytes(b"y")
    return {"recipes": recipes, "store": store, "kept": kept, "old": old, "stray": stray, "resumable": resumable}


def test_dry_run_lists_and_deletes_nothing_then_yes_deletes_only_unreferenced(setup, capsys) -> None:
    store = setup["store"]
    assert main(["gc", str(setup["recipes"])]) == 0
    out, err = capsys.readouterr()
    listed = sorted(line.split()[2] for line in out.splitlines() if line.startswith("  would remove"))
    assert listed == sorted(["prepared/" + "a" * 32, "prepared/" + "b" * 32, "trained/" + "c" * 32])
    assert "would remove 3 folder(s)" in err and "run with --yes to delete them" in err
    assert all(p.exists() for p in [*setup["old"].values(), setup["stray"]]), "a dry run deleted something"

    assert main(["gc", "--yes", str(setup["recipes"])]) == 0
    assert not any(p.exists() for p in [*setup["old"].values(), setup["stray"]])
    assert all(store.lookup(p.parent.name, p.name).hit for p in setup["kept"].values())
    assert setup["resumable"].is_dir(), "the work folder of a current key holds resumable checkpoints"


def test_gc_never_removes_what_a_running_build_holds(setup, capsys) -> None:
    store = setup["store"]
    read_key, writing_key = "a" * 32, "d" * 32
    half = store.workdir("merged", writing_key)
    (half / "model.safetensors").write_bytes(b"half")
    with store.reading([("prepared", read_key)]), store.lock("merged", writing_key):
        assert main(["gc", "--yes", str(setup["recipes"])]) == 0
    out = capsys.readouterr().out
    assert f"kept prepared/{read_key}: a running build holds it" in out
    assert f"kept merged/{writing_key}: a running build holds it" in out
    assert setup["old"]["a"].exists() and half.exists()
    assert not setup["old"]["b"].exists(), "what nobody holds still goes"


def test_a_recipe_that_cannot_be_planned_stops_gc_before_anything_goes(setup, capsys) -> None:
    (setup["recipes"] / "broken.yaml").write_text(yaml.safe_dump(
        {"base_model": "builtin:tiny-llama", "datasets": [{"path": str(setup["recipes"] / "gone.jsonl")}]}))
    assert main(["gc", "--yes", str(setup["recipes"])]) == 1
    err = capsys.readouterr().err
    assert "datasets[0].path: no file or folder at" in err and "gone.jsonl" in err
    assert all(p.exists() for p in setup["old"].values())
