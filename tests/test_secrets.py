"""Credentials given through the environment never leave it: a whole recipe runs in process with Dagster, reading
its data from S3 (moto) with an access key and secret that exist only as environment variables, and then every
output is searched for both values: each file under the store root, Dagster's instance folder (run storage, event
log, compute logs), every event of the run (messages and metadata), newt's local cache, the Python log records and
everything written to stdout/stderr by this process and its children (the training child included).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from definitions import build_definitions
from resources import NewtStore

pytestmark = pytest.mark.slow


def files_under(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def holders(secrets: list[str], named: dict[str, bytes]) -> dict[str, list[str]]:
    """{secret: the names whose content holds it}."""
    return {s: [name for name, data in named.items() if s.encode() in data] for s in secrets}


def test_env_credentials_appear_in_no_output(s3_server, tmp_path: Path, monkeypatch, capfd, caplog) -> None:
    from newt.synthetic import write_reversal_jsonl
    from newt.tiny import cache_dir

    key_id, secret = f"AKIANEWT{uuid.uuid4().hex[:12].upper()}", f"newt-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("NEWT_LEAK_TEST_KEY", key_id)
    monkeypatch.setenv("NEWT_LEAK_TEST_SECRET", secret)
    url = s3_server.unique_prefix() + "/reversal.jsonl"
    s3_server.put(url, write_reversal_jsonl(tmp_path / "reversal.jsonl", n=48).read_bytes())
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "leak.yaml").write_text(yaml.safe_dump({
        "base_model": "builtin:tiny-llama",
        "datasets": [{"path": url, "storage_options": {
            "key": "${env:NEWT_LEAK_TEST_KEY}", "secret": "${env:NEWT_LEAK_TEST_SECRET}",
            "endpoint_url": s3_server.endpoint}}],
        "sequence_len": 64, "val_set_size": 8, "lora_r": 4, "lora_alpha": 8, "micro_batch_size": 8,
        "max_steps": 2, "logging_steps": 1, "eval": {"max_samples": 4, "max_new_tokens": 4},
    }))  # fmt: skip
    store_root = tmp_path / "store"
    home = tmp_path / "dagster_home"
    home.mkdir()
    caplog.set_level(logging.DEBUG)
    defs = build_definitions(recipes, NewtStore(root=str(store_root)))
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        result = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance,
                                raise_on_error=False)  # fmt: skip
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        events = {f"event {i} ({r.dagster_event.event_type_value if r.dagster_event else 'log'})":
                  dg.serialize_value(r).encode() for i, r in enumerate(instance.all_logs(result.run_id))}  # fmt: skip
    out, err = capfd.readouterr()

    materialized = {e.materialization.asset_key.path[-1]: e.materialization
                    for e in result.get_asset_materialization_events()}  # fmt: skip
    assert materialized["dataset"].metadata["rows"].value == 48, "the rows really came from S3"
    named: dict[str, bytes] = {}
    for root, label in ((store_root, "store"), (home, "DAGSTER_HOME"), (cache_dir(), "NEWT_CACHE_DIR")):
        named.update({f"{label}/{p.relative_to(root)}": p.read_bytes() for p in files_under(root)})
    named.update(events)
    named["stdout"], named["stderr"] = out.encode(), err.encode()
    named["python logging, INFO and up"] = "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.INFO).encode()

    # The search can find things: the references themselves are recorded where the recipe is stored.
    recipe_json = next(name for name in named if name.startswith("store/trained/") and name.endswith("recipe.json"))
    assert b"${env:NEWT_LEAK_TEST_SECRET}" in named[recipe_json]
    assert any(b"step=1 loss=" in data for name, data in named.items() if name.startswith("event")), \
        "the training child's log lines are among the searched events"
    assert len([n for n in named if n.startswith("store/")]) > 20
    assert holders([secret, key_id], named) == {secret: [], key_id: []}
    # Safe defaults (tests/test_safe_defaults.py): a whole run writes weights as safetensors only, never pickles.
    pickled = [n for n in named if n.startswith("store/") and n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert pickled == [] and any(n.endswith(".safetensors") for n in named if n.startswith("store/merged/"))
    # botocore's own DEBUG records print the Authorization header, whose SigV4 `Credential=` names the access key
    # ID (AWS's public half of the pair); the secret is never in them.
    assert secret not in caplog.text
