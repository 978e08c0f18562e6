"""Shared test set-up: hermetic caches, the object-store emulator fixtures, and a tiny recipe factory."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Must precede any gcsfs import (see tests/servers.py). HF_*_OFFLINE stays unset on purpose: with it, `datasets`
# refuses even the loopback emulators; nothing here reaches for the hub anyway.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One newt cache per test session (built-in model, digests), never the user's ~/.cache/newt.
os.environ["NEWT_CACHE_DIR"] = tempfile.mkdtemp(prefix="newt-test-cache-")
# Training children start as fresh processes: a warm server (newt/train/warm.py) per test environment would hold
# ≈1 GB for minutes each. tests/test_warm.py switches it on where it is the subject.
os.environ["NEWT_WARM"] = "0"

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pytest  # noqa: E402

pytest_plugins = ["servers"]

TINY_RECIPE = """\
base_model: builtin:tiny-llama
datasets:
  - path: {data}
sequence_len: 64
val_set_size: 8
adapter: lora
lora_r: 4
lora_alpha: 8
lora_modules_to_save: [embed_tokens, lm_head]
micro_batch_size: 8
max_steps: 3
learning_rate: 0.002
logging_steps: 1
eval:
  max_samples: 8
  max_new_tokens: 8
"""


@pytest.fixture
def tiny_recipe_file(tmp_path: Path):
    """Write a tiny recipe (and its 48-row reversal dataset) and return a function making variants of it."""
    from newt.synthetic import write_reversal_jsonl

    data = write_reversal_jsonl(tmp_path / "data" / "reversal.jsonl", n=48)

    def make(name: str = "tiny", extra: str = "") -> Path:
        """`extra` is YAML whose top-level keys replace the tiny recipe's (a recipe may not repeat a key)."""
        import yaml

        path = tmp_path / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe = yaml.safe_load(TINY_RECIPE.format(data=data)) | (yaml.safe_load(extra) or {})
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return make


@pytest.fixture(scope="session", autouse=True)
def no_warm_server_outlives_the_suite():
    """Stop any warm training server a test started (one whose environment lacked NEWT_WARM=0), so that none
    holds its ≈1 GB after the suite; tests/test_warm.py stops its own."""
    from newt.train import warm

    before = set(warm.servers())
    yield
    warm.stop_servers(set(warm.servers()) - before)
