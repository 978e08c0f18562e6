"""Content-addressed cache: keys derive from exactly what determines each stage; commits are marker-last."""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from newt import STAGES
from newt.cache import MANIFEST, MARKER, Store, compute_key
from newt.config import Recipe, field_stages, load_recipe
from newt.pipeline import STAGE_DEFS, plan


def downstream(stage: str) -> set[str]:
    out = {stage}
    changed = True
    while changed:
        changed = False
        for s, d in STAGE_DEFS.items():
            if s not in out and out & set(d.upstream):
                out.add(s)
                changed = True
    return out


def keys_of(recipe: Recipe) -> dict[str, str]:
    return {s: k.key for s, k in plan(recipe).items()}


def changed_stages(a: Recipe, b: Recipe) -> set[str]:
    ka, kb = keys_of(a), keys_of(b)
    return {s for s in STAGES if ka[s] != kb[s]}


def test_same_inputs_same_keys(tiny_recipe_file) -> None:
    path = tiny_recipe_file()
    assert keys_of(load_recipe(path)) == keys_of(load_recipe(path))
    assert compute_key({"b": 1, "a": [1, 2]}) == compute_key({"a": [1, 2], "b": 1})


def _mutated(value: typing.Any, annotation: typing.Any) -> typing.Any:
    """A different valid value for a scalar field, from its type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    literals = [x for a in [annotation, *args] if typing.get_origin(a) is typing.Literal for x in typing.get_args(a)]
    if literals:
        others = [x for x in literals if x != value]
        if others:
            return others[0]
        if any(typing.get_origin(a) is list for a in args):
            return ["q_proj"]
        return None if type(None) in typing.get_args(annotation) else value
    if isinstance(value, list):
        return [*value, "x"] if value and all(isinstance(v, str) for v in value) else None
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "x"
    if value is None and str in args:
        return "x"
    if value is None and int in args:
        return 7
    return None


# Strings checked against transformers' own names: another valid name (appending "x" is not one).
NAMED = {"optimizer": "sgd", "lr_scheduler": "linear", "attn_implementation": "eager", "fsdp_version": 1}
# Fields valid only together with another one: that one is set too (it keys no stage itself).
TOGETHER = {"num_machines": {"main_process_ip": "127.0.0.1"}}
# Fields whose mutation needs an existing file or a valid model name; covered by dedicated tests below.
EXTERNAL = {"base_model", "tokenizer_config", "chat_template", "chat_template_jinja", "datasets"}


def test_each_stage_field_changes_exactly_its_stage_and_downstream(tiny_recipe_file) -> None:
    base = load_recipe(tiny_recipe_file())
    tested = 0
    for name, info in Recipe.model_fields.items():
        stages = field_stages(Recipe, name)
        if name in EXTERNAL or not stages:
            continue
        value = getattr(base, name)
        if isinstance(value, BaseModel):  # merge / quantize / eval sections: mutate their scalar fields
            for sub, sub_info in type(value).model_fields.items():
                sub_stages = field_stages(type(value), sub)
                new = _mutated(getattr(value, sub), sub_info.annotation)
                if not sub_stages or new is None:
                    continue
                variant = base.model_copy(update={name: value.model_copy(update={sub: new})})
                expect = set().union(*(downstream(s) for s in sub_stages))
                assert changed_stages(base, variant) == expect, f"{name}.{sub}"
                tested += 1
            continue
        new = NAMED[name] if name in NAMED and value != NAMED[name] else _mutated(value, info.annotation)
        if new is None:
            continue
        variant = Recipe.model_validate({**base.model_dump(), name: new, **TOGETHER.get(name, {})})
        expect = set().union(*(downstream(s) for s in stages))
        assert changed_stages(base, variant) == expect, name
        tested += 1
    assert tested >= 20


def test_dataset_entry_fields_key_their_own_stage(tiny_recipe_file) -> None:
    base = load_recipe(tiny_recipe_file())
    data = base.model_dump()
    data["datasets"][0]["field_messages"] = "conversation"
    assert changed_stages(base, Recipe.model_validate(data)) == downstream("prepared")
    data = base.model_dump()
    data["datasets"][0]["split"] = "train[:10]"
    assert changed_stages(base, Recipe.model_validate(data)) == downstream("dataset")
    data = base.model_dump()
    data["datasets"][0]["storage_options"] = {"anon": True}  # credentials/endpoints are in no key
    assert changed_stages(base, Recipe.model_validate(data)) == set()
    data = base.model_dump()
    data["eval"]["thresholds"] = {"exact_match": 0.5}  # gates are checked, not cached
    assert changed_stages(base, Recipe.model_validate(data)) == set()


def test_external_inputs_key_by_content(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe_file())
    before = keys_of(recipe)
    # the data file's bytes, not its name
    data = Path(recipe.datasets[0].path)
    data.write_text(data.read_text() + json.dumps({"messages": [{"role": "user", "content": "ab"},
                                                                {"role": "assistant", "content": "ba"}]}) + "\n")
    after = keys_of(recipe)
    assert {s for s in STAGES if before[s] != after[s]} == set(STAGES)

    # a local copy of the base model: tokenizer files key `prepared`, weights key `trained`
    from newt.models import resolve

    model = tmp_path / "model"
    shutil.copytree(resolve("builtin:tiny-llama"), model)
    local = recipe.model_copy(update={"base_model": str(model)})
    k0 = keys_of(local)
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes() + b"\0")
    k1 = keys_of(local)
    assert {s for s in STAGES if k0[s] != k1[s]} == downstream("trained")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 77
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    k2 = keys_of(local)
    assert {s for s in STAGES if k1[s] != k2[s]} == downstream("prepared")
    # the template text, when the recipe names one
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    t1 = keys_of(local.model_copy(update={"chat_template": "jinja", "chat_template_jinja": str(jinja)}))
    jinja.write_text("{% for m in messages %}{{ m['role'] }}{{ m['content'] }}{% endfor %}")
    t2 = keys_of(local.model_copy(update={"chat_template": "jinja", "chat_template_jinja": str(jinja)}))
    assert {s for s in STAGES if t1[s] != t2[s]} == downstream("prepared")


def _commit(store: Store, tmp_path: Path, key: str = "k" * 32) -> Path:
    work = store.workdir("trained", key)
    (work / "adapter").mkdir()
    (work / "adapter" / "weights.bin").write_bytes(b"12345")
    (work / "metrics.json").write_text("{}")
    store.commit("trained", key, work, {"why": "test"}, {"final_loss": 1.0})
    return Path(store.path("trained", key))


def test_commit_writes_manifest_and_marker_last(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    folder = _commit(store, tmp_path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        MARKER, "adapter/weights.bin", MANIFEST, "metrics.json"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["inputs"] == {"why": "test"} and manifest["metadata"] == {"final_loss": 1.0}
    assert [f["path"] for f in manifest["files"]] == ["adapter/weights.bin", "metrics.json"]
    assert manifest["files"][0]["size"] == 5
    hit = store.lookup("trained", "k" * 32, verify_hashes=True)
    assert hit.hit and hit.manifest["key"] == "k" * 32
    assert not (tmp_path / "store" / "trained" / f".work-{'k' * 32}").exists()


def test_folder_without_marker_is_not_a_hit(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    folder = _commit(store, tmp_path)
    (folder / MARKER).unlink()
    found = store.lookup("trained", "k" * 32)
    assert found.status == "miss" and "marker" in found.reason
    _commit(store, tmp_path)  # a leftover folder does not block a new commit
    assert store.lookup("trained", "k" * 32).hit


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace("1.0", "2.0")), "does not match"),
    (lambda f: (f / MANIFEST).unlink(), "missing"),
    (lambda f: (f / "adapter" / "weights.bin").write_bytes(b"1234"), "wrong size"),
    (lambda f: (f / "metrics.json").unlink(), "missing or has the wrong size"),
])
def test_corruption_is_detected(tmp_path: Path, damage, reason) -> None:
    store = Store(str(tmp_path / "store"))
    damage(_commit(store, tmp_path))
    found = store.lookup("trained", "k" * 32)
    assert found.status == "corrupt" and reason in found.reason


def test_same_size_tampering_is_found_by_hash_verification(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    folder = _commit(store, tmp_path)
    (folder / "adapter" / "weights.bin").write_bytes(b"54321")
    assert store.lookup("trained", "k" * 32).hit  # sizes match: the cheap check passes
    assert "sha256" in store.lookup("trained", "k" * 32, verify_hashes=True).reason
