"""Keys depend on content, not spelling: a dataset file is its bytes wherever it lives and however its path is
written, and fields the schema tags with no stage (cadence, logging, gates) are in no key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel

from newt import STAGES
from newt.cache import Store
from newt.config import Recipe, field_stages, load_recipe
from newt.pipeline import plan, run_stage
from newt.sources import identity


def keys(recipe: Recipe) -> dict[str, str]:
    return {s: k.key for s, k in plan(recipe).items() if s in STAGES}


def with_path(recipe: Recipe, path: str) -> Recipe:
    data = recipe.model_dump()
    data["datasets"][0]["path"] = path
    return Recipe.model_validate(data)


def test_the_same_bytes_under_another_spelling_or_folder_hit_every_stage(tiny_recipe_file, tmp_path, monkeypatch):
    base = load_recipe(tiny_recipe_file())
    original = Path(base.datasets[0].path)
    moved = tmp_path / "my" / "a.jsonl"
    moved.parent.mkdir()
    shutil.copyfile(original, moved)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    relative = with_path(base, "../my/a.jsonl")
    absolute = with_path(base, str(moved))
    assert os.path.abspath(relative.datasets[0].path) == str(moved)
    assert keys(relative) == keys(absolute) == keys(base)

    store = Store(str(tmp_path / "store"))
    assert run_stage(absolute, "dataset", store, log=lambda _: None).cache == "miss"
    assert run_stage(relative, "dataset", store, log=lambda _: None).cache == "hit"
    assert run_stage(base, "dataset", store, log=lambda _: None).cache == "hit"

    moved.write_text(moved.read_text().replace("a", "b", 1))  # other bytes: another dataset
    changed = keys(absolute)
    assert {s for s in STAGES if changed[s] != keys(base)[s]} == set(STAGES)


def test_a_version_that_is_not_from_the_bytes_keeps_its_location() -> None:
    local = {"uri": "/data/a.jsonl", "kind": "sha256", "version": "ab" * 32, "files": []}
    assert identity(local) == {"kind": "sha256", "version": "ab" * 32}
    assert identity({**local, "uri": "s3://b/a.jsonl", "kind": "md5", "version": "cd" * 16}) == {
        "kind": "md5", "version": "cd" * 16}
    # a GCS generation or an ETag only tells versions of one object apart: two buckets may share one
    gen = {"uri": "gs://b/a.jsonl", "kind": "generation", "version": "1700000000000001", "files": []}
    assert identity(gen) == {"kind": "generation", "version": "1700000000000001", "uri": "gs://b/a.jsonl"}
    mixed = {"uri": "s3://b/", "kind": "etag+md5", "version": "x", "files": []}
    assert identity(mixed)["uri"] == "s3://b/"


def _other(value, annotation) -> object | None:
    """Another valid value of an untagged scalar field (None when the test has none to offer)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None and "int" in str(annotation):
        return 2
    return None


def test_save_steps_and_logging_steps_change_no_key(tiny_recipe_file) -> None:
    base = load_recipe(tiny_recipe_file())
    before = keys(base)
    for update in ({"save_steps": 7}, {"logging_steps": 3}, {"save_steps": 1, "logging_steps": 1}):
        assert keys(base.model_copy(update=update)) == before, update
    assert keys(base.model_copy(update={"max_steps": 4})) != before  # a field that changes the weights does


def test_every_field_without_a_stage_tag_is_in_no_key(tiny_recipe_file) -> None:
    """The schema's stage tags decide: each untagged scalar field, changed, leaves every key as it was."""
    base = load_recipe(tiny_recipe_file())
    before = keys(base)
    tested = []
    for model, obj, prefix in ((Recipe, base, ""), (type(base.eval), base.eval, "eval.")):
        for name in model.model_fields:
            if field_stages(model, name) or isinstance(getattr(obj, name), BaseModel):
                continue
            new = _other(getattr(obj, name), model.model_fields[name].annotation)
            if new is None:
                continue
            changed = obj.model_copy(update={name: new})
            variant = changed if prefix == "" else base.model_copy(update={"eval": changed})
            assert keys(variant) == before, prefix + name
            tested.append(prefix + name)
    assert {"save_steps", "logging_steps", "dataset_num_proc", "mask_audit_max_failure_rate"} <= set(tested)
