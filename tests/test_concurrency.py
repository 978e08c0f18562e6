"""Two real processes materialize the same keys at the same moment.

Local store: the per-key flock makes one build and the other wait, then find the committed artifact (exactly one
`miss` per stage). Object store (S3 on moto): there are no locks; both may build, and marker-last commits of the
same key must still leave one artifact that verifies, with neither process failing.

Both children import everything first, then wait at a barrier file, so their `run_stage` calls start together.
They are given the same keys (planned once, here), so an edit of newt's code while the test runs cannot split them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan
from newt.synthetic import write_reversal_jsonl

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time

import datasets, transformers  # noqa: F401  (heavy imports before the barrier)
import newt.data, newt.prepare  # noqa: F401
from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import KeyInfo, run_stage
from newt.sources import resolve_storage_options

recipe_file, root, keys_file, go, stages = sys.argv[1:6]
recipe = load_recipe(recipe_file)
store = Store(root, resolve_storage_options(json.loads(os.environ.get("CONC_STORE_OPTIONS") or "{}")))
keys = {s: KeyInfo(s, v["key"], v["inputs"]) for s, v in json.load(open(keys_file)).items()}
open(f"{go}.ready-{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
out = {}
for stage in stages.split(","):
    start = time.time()
    outcome = run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    out[stage] = {"cache": outcome.cache, "start": start, "end": time.time()}
print("OUTCOME " + json.dumps(out), flush=True)
"""


def race(tmp_path: Path, recipe_file: Path, root: str, stages: list[str], envs: list[dict] | None = None,
         ) -> list[dict]:  # fmt: skip
    keys = plan(load_recipe(recipe_file), (stages[-1],))
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({s: {"key": k.key, "inputs": k.inputs} for s, k in keys.items()}))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(recipe_file), root, str(keys_file), str(go), ",".join(stages)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        )
        for env in envs or [{}, {}]
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < 2:
        assert time.monotonic() < deadline, "the children did not reach the barrier"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"a racing process failed:\n{err[-4000:]}"
        [line] = [ln for ln in out.splitlines() if ln.startswith("OUTCOME ")]
        results.append(json.loads(line[len("OUTCOME ") :]))
    return results


def write_recipe(tmp_path: Path) -> Path:
    data = write_reversal_jsonl(tmp_path / "data" / "reversal.jsonl", n=200)
    recipe = tmp_path / "recipes" / "race.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(yaml.safe_dump({"base_model": "builtin:tiny-llama", "datasets": [{"path": str(data)}],
                                      "sequence_len": 64, "val_set_size": 8}))  # fmt: skip
    return recipe


def test_two_processes_on_a_local_store_build_each_key_once(tmp_path: Path) -> None:
    recipe_file = write_recipe(tmp_path)
    root = str(tmp_path / "store")
    results = race(tmp_path, recipe_file, root, ["dataset", "prepared"])
    store = Store(root)
    keys = plan(load_recipe(recipe_file), ("prepared",))
    for stage in ("dataset", "prepared"):
        caches = sorted(r[stage]["cache"] for r in results)
        assert caches == ["hit", "miss"], f"{stage}: {caches}: exactly one process builds a key"
        assert store.lookup(stage, keys[stage].key, verify_hashes=True).hit
    # The dataset stage started together: the process that got the hit waited for the builder's commit.
    builder, waiter = sorted(results, key=lambda r: r["dataset"]["cache"] == "hit")
    assert waiter["dataset"]["start"] < builder["dataset"]["end"] <= waiter["dataset"]["end"] + 0.5
    leftovers = [p.name for p in (Path(root) / "prepared").iterdir() if p.name.startswith(".work-")]
    assert leftovers == [], "no work folder is left behind"


@pytest.mark.parametrize("machines", [1, 2], ids=["one-machine", "two-machines"])
def test_two_processes_on_an_object_store_leave_one_verified_artifact(s3_server, tmp_path: Path,
                                                                       machines: int) -> None:  # fmt: skip
    """One machine: the processes share the key's local work folder and its local lock: one builds. Two machines
    (simulated: a local cache each): no lock at all, both may build, the store must still hold one good artifact."""
    from newt.sources import resolve_storage_options

    recipe_file = write_recipe(tmp_path)
    root = s3_server.unique_prefix() + "/store"
    options = s3_server.storage_options
    envs = [{"CONC_STORE_OPTIONS": json.dumps(options)} for _ in range(2)]
    if machines == 2:
        for i, env in enumerate(envs):
            env["NEWT_CACHE_DIR"] = str(tmp_path / f"machine-{i}")
    results = race(tmp_path, recipe_file, root, ["dataset"], envs)
    caches = sorted(r["dataset"]["cache"] for r in results)
    if machines == 1:
        assert caches == ["hit", "miss"], caches
    else:
        assert "miss" in caches, caches
    store = Store(root, resolve_storage_options(options))
    key = plan(load_recipe(recipe_file), ("dataset",))["dataset"].key
    found = store.lookup("dataset", key, verify_hashes=True)
    assert found.hit, found.reason
    listed = {p.rsplit("/", 1)[-1] for p in store.fs.find(store.path("dataset", key))}
    assert {e["path"].rsplit("/", 1)[-1] for e in found.manifest["files"]} | {"manifest.json", "_COMMITTED"} == listed


def test_local_lock_is_per_key(tmp_path: Path) -> None:
    """A held lock on one key does not block another key (Axolotl's one lock for the whole cache did)."""
    store = Store(str(tmp_path / "store"))
    with store.lock("prepared", "a" * 32):
        code = (
            "import sys; from newt.cache import Store; s = Store(sys.argv[1]);\n"
            "with s.lock('prepared', 'b' * 32): print('got b')"
        )
        done = subprocess.run([sys.executable, "-c", code, store.root], check=False, capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert done.stdout.strip() == "got b", done.stderr
        code = code.replace("'b' * 32", "'a' * 32").replace("got b", "got a")
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run([sys.executable, "-c", code, store.root], check=False, capture_output=True, timeout=5, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
