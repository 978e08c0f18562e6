"""Stage code versions are derived from the code and libraries that compute each stage (newt/codeversion.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from newt import STAGES, codeversion
from newt.cache import Store
from newt.cli import main
from newt.config import load_recipe
from newt.pipeline import plan, run_stage


def keys(recipe_file: Path) -> dict[str, str]:
    return {s: k.key for s, k in plan(load_recipe(recipe_file)).items() if s in STAGES}


@pytest.fixture
def newt_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the newt package that code versions are read from, so a test can edit a module."""
    copy = tmp_path / "src" / "newt"
    shutil.copytree(codeversion.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codeversion, "ROOT", copy)
    return copy


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


@pytest.mark.parametrize(
    "module, changed",
    [
        # prepared imports it through newt.prepare → prepare_rows → masking; everything downstream follows
        ("masking/scanner.py", {"prepared", "trained", "merged", "quantized", "evaluation"}),
        # only the training child imports it (newt.train.sft → newt.train.child → newt.train.report)
        ("train/report.py", {"trained", "merged", "quantized", "evaluation"}),
        # only the quantize stage's exporter
        ("export/gguf.py", {"quantized", "evaluation"}),
    ],
)
def test_editing_a_module_changes_the_stages_that_import_it_and_downstream(
    tiny_recipe_file, newt_copy: Path, module: str, changed: set[str]
) -> None:
    recipe = tiny_recipe_file()
    before = keys(recipe)
    edit(newt_copy / module)
    after = keys(recipe)
    assert {s for s in STAGES if before[s] != after[s]} == changed


def test_the_key_inputs_name_each_module_and_library(tiny_recipe_file) -> None:
    info = plan(load_recipe(tiny_recipe_file()))
    code = info["prepared"].inputs["code"]
    assert {"newt.prepare", "newt.prepare_rows", "newt.masking.scanner", "newt.templates"} <= set(code["modules"])
    assert "newt.train.child" not in code["modules"] and "newt.train.child" in info["trained"].inputs["code"]["modules"]
    assert {"transformers", "tokenizers", "datasets", "numpy"} <= set(code["libraries"])
    # declared in newt/train/__init__.py: accelerate runs as a process, never imported
    assert "accelerate" in info["trained"].inputs["code"]["libraries"]
    assert "accelerate" not in code["libraries"]


def fake_distribution(root: Path, name: str, version: str) -> None:
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_a_new_transformers_version_changes_prepared_but_not_dataset(tiny_recipe_file, tmp_path, monkeypatch) -> None:
    recipe = tiny_recipe_file()
    before = keys(recipe)
    fake_distribution(tmp_path / "site", "transformers", "99.0.0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # found before the installed one
    after = keys(recipe)
    assert {s for s in STAGES if before[s] != after[s]} == {"prepared", "trained", "merged", "quantized", "evaluation"}
    assert plan(load_recipe(recipe))["prepared"].inputs["code"]["libraries"]["transformers"] == "99.0.0"


def test_plan_names_the_module_and_the_library_that_changed(
    tiny_recipe_file, newt_copy: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    store_root = tmp_path / "store"
    monkeypatch.setenv("NEWT_STORE", str(store_root))
    recipe = tiny_recipe_file()
    run_stage(load_recipe(recipe), "dataset", Store(str(store_root)), log=lambda _: None)
    edit(newt_copy / "sources" / "errors.py")
    fake_distribution(tmp_path / "site", "fsspec", "1999.1.0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    dataset = out[out.index("\ndataset ") : out.index("\nprepared ")]
    assert "module newt.sources.errors: " in dataset
    assert "→ 1999.1.0" in dataset and "library fsspec: " in dataset
    assert "code_version" not in dataset  # the module and library lines say why
