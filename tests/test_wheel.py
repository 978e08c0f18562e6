"""newt as a wheel: it installs `newt` and `newt_dagster` only (no top-level `assets`, `resources`, `jobs` or
`definitions` to shadow another Dagster project's), holds every module of the checkout, and `newt run RECIPE`
works from the installed files alone, in a folder outside any checkout.

The wheel is built offline from a copy of the working tree (`pip wheel --no-deps --no-build-isolation`) and
installed with `pip install --no-deps --target`: the dependencies are this interpreter's own, the code is the
wheel's. The run's output says which files it imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from newt.synthetic import write_reversal_jsonl

ROOT = Path(__file__).resolve().parents[1]
LAYER = ["definitions.py", "assets", "resources", "jobs"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(base / "dist"), str(tree)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (found,) = (base / "dist").glob("newt-*.whl")
    return found


def test_the_wheel_holds_every_module_and_no_shadowing_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"newt", "newt_dagster"}
    core = {p.relative_to(ROOT).as_posix() for p in (ROOT / "newt").rglob("*.py")}
    assert core <= set(names), sorted(core - set(names))
    layer = {f"newt_dagster/{p.relative_to(ROOT).as_posix()}" for d in LAYER[1:] for p in (ROOT / d).glob("*.py")}
    layer.add("newt_dagster/definitions.py")
    assert layer <= set(names), sorted(layer - set(names))
    assert {"newt/presets/single_gpu.yaml", "newt_dagster/dagster.yaml"} <= set(names)


@pytest.mark.slow
def test_newt_run_works_from_the_installed_wheel_outside_a_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    assert not any((target / name).exists() for name in LAYER), "a layer package installed top-level"
    work = tmp_path / "elsewhere"
    data = write_reversal_jsonl(work / "data" / "reversal.jsonl", n=24)
    (work / "wheel_tiny.yaml").write_text(yaml.safe_dump({
        "base_model": "builtin:tiny-llama", "datasets": [{"path": "data/reversal.jsonl"}], "sequence_len": 64,
        "val_set_size": 4, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "micro_batch_size": 4, "max_steps": 2,
        "eval": {"max_samples": 4, "max_new_tokens": 4}}))  # fmt: skip
    assert data.is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAGSTER_HOME", "NEWT_STORE", "NEWT_RECIPES")}
    env |= {"PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    where = subprocess.run(
        [sys.executable, "-c", "import newt, newt.cli; m = newt.cli.dagster_verbs(); print(newt.__file__); "
                               "print(m.__name__, m.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert where.returncode == 0, where.stderr[-3000:]
    core_file, layer_line = where.stdout.split("\n")[:2]
    assert core_file.startswith(str(target)) and layer_line.startswith(f"newt_dagster.jobs.cli {target}"), where.stdout
    run = subprocess.run([str(target / "bin" / "newt"), "run", "wheel_tiny.yaml"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "newt run wheel_tiny: ok in" in run.stderr
    for stage in ("dataset", "prepared", "trained", "merged", "quantized", "evaluation"):
        assert f"✓ {stage}  miss" in run.stderr, stage
        assert any((work / ".newt" / "store" / stage).iterdir()), stage
