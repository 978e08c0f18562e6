"""One tiny recipe materialized once per test session by `newt run`, shared by the CLI and browser tests.

Its DAGSTER_HOME holds the run (the browser test serves it with `newt ui`); its store holds the six artifacts.
A plain module-level cache rather than a fixture, so that two test modules share one run without touching
conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Axolotl spellings on purpose: `newt run` takes an Axolotl file in the supported subset as it stands.
AXOLOTL_EXTRA = """\
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
lora_target_linear: true
output_dir:
wandb_project:
"""


# One gate, continuing TINY_RECIPE's closing `eval:` block: a recipe without gates has no checks (issue 17), and
# the CLI and browser tests read a check's verdict.
GATE = "  thresholds: {loss: 100.0}\n"


@dataclass
class TinyRun:
    root: Path
    recipes: Path
    recipe: Path  # recipes/tiny.yml
    store: Path
    home: Path  # DAGSTER_HOME
    rc: int
    stderr: str

    def env(self) -> dict[str, str]:
        return {
            "NEWT_STORE": str(self.store),
            "DAGSTER_HOME": str(self.home),
            "NEWT_RECIPES": str(self.recipes),
        }


_RUN: TinyRun | None = None


def tiny_run() -> TinyRun:
    global _RUN
    if _RUN is None:
        _RUN = _materialize()
    return _RUN


def _materialize() -> TinyRun:
    from conftest import TINY_RECIPE

    from newt.cli import main
    from newt.synthetic import write_reversal_jsonl

    root = Path(tempfile.mkdtemp(prefix="newt-tiny-run-"))
    data = write_reversal_jsonl(root / "data" / "reversal.jsonl", n=48)
    recipes = root / "recipes"
    recipes.mkdir()
    recipe = recipes / "tiny.yml"
    recipe.write_text(TINY_RECIPE.format(data=data) + GATE + AXOLOTL_EXTRA)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    run = TinyRun(root, recipes, recipe, root / "store", home, rc=-1, stderr="")
    saved = {k: os.environ.get(k) for k in run.env()}
    os.environ.update(run.env())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            run.rc = main(["run", str(recipe)])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    run.stderr = err.getvalue()
    return run
