"""Crash safety: a stage killed with SIGKILL half-way through writing its artifact leaves nothing committed, and the
rerun completes (training resumes from its last checkpoint).

Each test runs the stage in a real child process (`CHILD` below, `python -c`). The kill points are real moments of
the build, reached by wrapping a library call inside the child only (no test hooks in newt itself):

| stage           | the child is killed                                                                  |
|-----------------|--------------------------------------------------------------------------------------|
| prepared        | right after `newt.prepare.write_splits` wrote `data/`, before `masking.json`         |
| prepared        | in `Store.commit`, after manifest.json was written and fsynced, before `_COMMITTED`   |
| trained         | mid-training, as soon as the first checkpoint is complete (no hook: a real slow point) |
| merged          | right after `save_pretrained` wrote the weights, before the tokenizer files          |
| dataset (S3)    | after every file and the manifest were uploaded, before the marker                   |

The whole process group (the stage process, and for `trained` accelerate and the training child) gets SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from newt.cache import MARKER, Store
from newt.config import load_recipe
from newt.pipeline import KeyInfo, plan, run_stage
from newt.synthetic import write_reversal_jsonl

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import STAGE_DEFS, plan, run_stage
from newt.sources import resolve_storage_options

recipe_file, root, stage, hook, ready = sys.argv[1:6]
armed = False  # hooks fire only while the stage under test builds, never for its upstream stages


def block():
    if armed:
        with open(ready, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)


def after(owner, name):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        block()
        return out

    setattr(owner, name, wrapper)


if hook == "write_splits":
    import newt.prepare
    after(newt.prepare, "write_splits")
elif hook == "save_pretrained":
    import transformers
    after(transformers.PreTrainedModel, "save_pretrained")
elif hook == "before_marker":
    import newt.cache
    after(newt.cache, "_fsync_tree")
elif hook == "before_remote_marker":  # the async method: fsspec binds the sync one per instance
    import s3fs
    original = s3fs.S3FileSystem._pipe_file

    async def _pipe_file(self, path, *args, **kwargs):
        if str(path).endswith("_COMMITTED"):
            block()
        return await original(self, path, *args, **kwargs)

    s3fs.S3FileSystem._pipe_file = _pipe_file

recipe = load_recipe(recipe_file)
store = Store(root, resolve_storage_options(json.loads(os.environ.get("CRASH_STORE_OPTIONS") or "{}")))
keys = plan(recipe, (stage,))
with open(ready + ".plan", "w") as f:  # the keys this process builds, for the parent's checks and rerun
    json.dump({s: {"key": k.key, "inputs": k.inputs} for s, k in keys.items()}, f)


def ensure(s):  # build only the upstream stages that are not committed yet
    if not store.lookup(s, keys[s].key).hit:
        for u in STAGE_DEFS[s].upstream:
            ensure(u)
        run_stage(recipe, s, store, keys=keys, log=lambda m: None)


for upstream in STAGE_DEFS[stage].upstream:
    ensure(upstream)
armed = True
outcome = run_stage(recipe, stage, store, keys=keys, log=print)
print("OUTCOME", json.dumps({"cache": outcome.cache, "key": outcome.key}), flush=True)
"""


def start(recipe_file: Path, root: str, stage: str, hook: str, ready: Path, log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(recipe_file), root, stage, hook, str(ready)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )  # fmt: skip


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 180) -> None:
    """SIGKILL the child's whole process group as soon as `ready()` holds; fail if the child ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the child ended (exit {proc.returncode}) before the kill point; its log:\n"
                        f"{log.read_text()[-4000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the kill point was not reached in {timeout} s; log:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the group we started: this process, accelerate and its child
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def assert_nothing_committed(store: Store, stage: str, key: str) -> None:
    found = store.lookup(stage, key)
    assert found.status != "hit", f"a killed build left a committed {stage} artifact"
    assert not (Path(store.path(stage, key)) / MARKER).exists()


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("crash")
    data = write_reversal_jsonl(base / "data" / "reversal.jsonl", n=48)

    def recipe(name: str, **overrides: Any) -> Path:
        fields = {
            "base_model": "builtin:tiny-llama", "datasets": [{"path": str(data)}], "sequence_len": 64,
            "val_set_size": 8, "lora_r": 4, "lora_alpha": 8, "micro_batch_size": 4, "max_steps": 6,
            "save_steps": 2, "logging_steps": 1, "learning_rate": 0.002, "eval": {"max_samples": 8},
        }  # fmt: skip
        fields.update(overrides)
        path = base / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(fields))
        return path

    return {"base": base, "recipe": recipe, "root": str(base / "store")}


def child_keys(ready: Path) -> dict[str, KeyInfo] | None:
    """The keys the child planned (it writes them first): checks and the rerun use exactly these, so an edit of
    newt's code between the two processes (which changes code versions) cannot make the test compare two keys."""
    path = Path(f"{ready}.plan")
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except ValueError:  # being written
        return None
    return {s: KeyInfo(s, v["key"], v["inputs"]) for s, v in raw.items()}


def rerun(recipe_file: Path, stage: str, store: Store, keys: dict[str, KeyInfo]):
    outcome = run_stage(load_recipe(recipe_file), stage, store, keys=keys, log=lambda _: None)
    assert (outcome.key, outcome.cache) == (keys[stage].key, "miss")
    assert store.lookup(stage, outcome.key, verify_hashes=True).hit
    return outcome


def test_prepare_killed_after_writing_its_data_commits_nothing_and_reruns(crash, tmp_path: Path) -> None:
    recipe_file = crash["recipe"]("prepare_crash", seed=1)  # a prepared key no other test builds
    store = Store(crash["root"])
    ready, log = tmp_path / "ready", tmp_path / "child.log"
    proc = start(recipe_file, crash["root"], "prepared", "write_splits", ready, log)
    kill_when(proc, ready.exists, log)
    keys = child_keys(ready)
    key = keys["prepared"].key

    work = Path(crash["root"]) / "prepared" / f".work-{key}"
    assert (work / "data" / "dataset_dict.json").is_file(), "killed after the data was written"
    assert not (work / "masking.json").exists(), "...and before the rest of the artifact"
    assert_nothing_committed(store, "prepared", key)

    rerun(recipe_file, "prepared", store, keys)
    assert not work.exists(), "the work folder became the artifact"


def test_killed_between_manifest_and_marker_is_not_a_hit(crash, tmp_path: Path) -> None:
    recipe_file = crash["recipe"]("marker_crash", seed=2)
    store = Store(crash["root"])
    ready, log = tmp_path / "ready", tmp_path / "child.log"
    proc = start(recipe_file, crash["root"], "prepared", "before_marker", ready, log)
    kill_when(proc, ready.exists, log)
    keys = child_keys(ready)
    key = keys["prepared"].key

    work = Path(crash["root"]) / "prepared" / f".work-{key}"
    assert (work / "manifest.json").is_file() and not (work / MARKER).exists()
    assert_nothing_committed(store, "prepared", key)
    rerun(recipe_file, "prepared", store, keys)


@pytest.mark.slow
def test_training_killed_mid_run_commits_nothing_and_the_rerun_resumes(crash, tmp_path: Path) -> None:
    recipe_file = crash["recipe"]("train_crash")
    store = Store(crash["root"])
    ready, log = tmp_path / "ready", tmp_path / "child.log"

    def checkpoint_saved() -> bool:  # Trainer writes trainer_state.json last in a checkpoint
        keys = child_keys(ready)
        work = Path(crash["root"]) / "trained" / f".work-{keys['trained'].key}" if keys else tmp_path / "none"
        return any(work.glob("checkpoints/checkpoint-*/trainer_state.json"))

    proc = start(recipe_file, crash["root"], "trained", "none", ready, log)
    kill_when(proc, checkpoint_saved, log)
    keys = child_keys(ready)
    key = keys["trained"].key
    work = Path(crash["root"]) / "trained" / f".work-{key}"
    assert not (work / "adapter").exists() and not (work / "metrics.json").exists(), "killed mid-training"
    assert_nothing_committed(store, "trained", key)
    time.sleep(0.5)
    assert not (work / "metrics.json").exists(), "no process of the killed group kept training"

    outcome = rerun(recipe_file, "trained", store, keys)
    assert outcome.metadata["global_step"] == 6
    # Resume itself is the training child's (tests of newt.train); here: the rerun picked up the checkpoint.
    assert outcome.metadata.get("resumed_from_step", 0) >= 2, outcome.metadata
    files = {e["path"] for e in store.lookup("trained", key).manifest["files"]}
    assert not any(f.startswith("checkpoints/") for f in files), "checkpoints are not part of the artifact"


def commit_untrained_adapter(recipe_file: Path, store: Store) -> None:
    """Commit a freshly initialised LoRA adapter as the recipe's `trained` artifact: the merge crash test needs
    an adapter to merge, not a trained one, and this takes a second where training takes half a minute."""
    import torch
    from peft import LoraConfig, get_peft_model

    from newt.models import load_model, load_tokenizer

    recipe = load_recipe(recipe_file)
    info = plan(recipe, ("trained",))["trained"]
    if store.lookup("trained", info.key).hit:
        return
    folder = store.workdir("trained", info.key)
    model = get_peft_model(load_model(recipe.base_model, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
    load_tokenizer(recipe.base_model).save_pretrained(str(folder / "adapter"))
    (folder / "metrics.json").write_text("{}")
    store.commit("trained", info.key, folder, info.inputs, {"note": "untrained adapter (crash test)"})


def test_merge_killed_after_writing_weights_commits_nothing_and_reruns(crash, tmp_path: Path) -> None:
    recipe_file = crash["recipe"]("merge_crash", lora_r=2)
    store = Store(crash["root"])
    commit_untrained_adapter(recipe_file, store)
    ready, log = tmp_path / "ready", tmp_path / "child.log"
    proc = start(recipe_file, crash["root"], "merged", "save_pretrained", ready, log)
    kill_when(proc, ready.exists, log)
    keys = child_keys(ready)
    key = keys["merged"].key

    work = Path(crash["root"]) / "merged" / f".work-{key}"
    assert list(work.glob("model/*.safetensors")), "killed after the weights were written"
    assert not (work / "model" / "tokenizer_config.json").exists(), "...and before the tokenizer"
    assert_nothing_committed(store, "merged", key)

    rerun(recipe_file, "merged", store, keys)
    files = {e["path"] for e in store.lookup("merged", key).manifest["files"]}
    assert "model/tokenizer_config.json" in files and "model/model.safetensors" in files


def test_object_store_commit_killed_before_the_marker_is_not_a_hit(s3_server, crash, tmp_path: Path) -> None:
    from newt.sources import resolve_storage_options

    recipe_file = crash["recipe"]("s3_crash")
    root = s3_server.unique_prefix() + "/store"
    options = s3_server.storage_options  # ${env:...} references; the child resolves them from its environment
    store = Store(root, resolve_storage_options(options))
    ready, log = tmp_path / "ready", tmp_path / "child.log"
    proc = start(recipe_file, root, "dataset", "before_remote_marker", ready, log,
                 env={"CRASH_STORE_OPTIONS": json.dumps(options)})  # fmt: skip
    kill_when(proc, ready.exists, log)
    keys = child_keys(ready)
    key = keys["dataset"].key

    fs, base = store.fs, store.path("dataset", key)
    fs.invalidate_cache()
    assert fs.glob(f"{base}/w-*/manifest.json"), "killed after the manifest was uploaded (under its writer prefix)"
    found = store.lookup("dataset", key)
    assert found.status == "miss" and found.reason == "no commit marker"
    rerun(recipe_file, "dataset", store, keys)
