"""A whole tiny recipe run with its artifact store on S3 (moto on 127.0.0.1) and its data there too: every stage
commits to the bucket, a second run is all cache hits, and the prepared artifact loads standalone after a copy."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from newt.cache import Store
from newt.config import parse_recipe
from newt.pipeline import nodes, plan, run_stage
from newt.sources import resolve_storage_options
from newt.synthetic import reversal_rows

pytestmark = pytest.mark.slow


def test_full_recipe_with_an_s3_store(s3_server, tmp_path: Path) -> None:
    prefix = s3_server.unique_prefix()
    data = s3_server.put(f"{prefix}/data/rev.jsonl", "".join(json.dumps(r) + "\n" for r in reversal_rows(40)))
    options = json.dumps(s3_server.storage_options)
    recipe = parse_recipe(f"""
base_model: builtin:tiny-llama
datasets:
  - path: {data}
    storage_options: {options}
sequence_len: 64
val_set_size: 4
sample_packing: true
lora_r: 4
micro_batch_size: 4
max_steps: 2
logging_steps: 1
eval: {{max_samples: 4, max_new_tokens: 4}}
""")
    store = Store(f"{prefix}/store", resolve_storage_options(dict(s3_server.storage_options), "store"))
    assert not store.is_local
    keys = plan(recipe)
    first = {n: run_stage(recipe, n, store, keys=keys, log=lambda m: None) for n in nodes(recipe)}
    assert {n: o.cache for n, o in first.items()} == {n: "miss" for n in nodes(recipe)}
    fs = s3_server.fs()
    for n, o in first.items():
        assert o.uri.startswith("s3://") and fs.exists(f"{o.uri}/_COMMITTED"), n
    again = {n: run_stage(recipe, n, store, keys=keys, log=lambda m: None).cache for n in nodes(recipe)}
    assert set(again.values()) == {"hit"}

    # The prepared artifact is a plain datasets folder: copy it down, load it with nothing but `datasets`.
    local = tmp_path / "prepared"
    fs.get(first["prepared"].uri + "/", str(local) + "/", recursive=True)
    dd = datasets.load_from_disk(str(local / "data"))
    assert len(dd["validation"]) == 4 and "seq_lengths" in dd["train"].column_names
    assert json.loads((local / "masking.json").read_text())["counts"]["rows_in"] == 40
