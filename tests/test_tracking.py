"""Experiment tracking against the real trackers: an MLflow tracking server on 127.0.0.1 (the `mlflow` package's own
server, started here and stopped by its PID), Weights & Biases in offline mode (its run file read back with the
`wandb` package's protobuf records) and TensorBoard event files (read back with tensorboard's EventAccumulator).

One tiny training through Dagster (the `trained` asset, `accelerate launch` under Pipes) reports to all three at
once; each test reads one tracker back.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from newt.config import RecipeError, parse_recipe

SECRET = "wandb-secret-in-env-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port with a sqlite backend; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/m.db", "--default-artifact-root", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: its workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            pytest.fail(f"mlflow server did not answer /health: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group of the process started above, by its PID
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    """Materialize dataset → prepared → trained through Dagster with all three trackers on."""
    import dagster as dg

    from definitions import build_definitions
    from newt.synthetic import write_reversal_jsonl
    from resources import NewtStore
    from conftest import TINY_RECIPE

    root = tmp_path_factory.mktemp("tracked")
    data = write_reversal_jsonl(root / "data" / "reversal.jsonl", n=48)
    recipe = yaml.safe_load(TINY_RECIPE.format(data=data)) | {
        "report_to": ["tensorboard"], "wandb_project": "newt-test", "wandb_mode": "offline",
        "mlflow_tracking_uri": mlflow_server, "mlflow_experiment_name": "newt-tracking-test",
    }
    (root / "recipes").mkdir()
    (root / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {"NEWT_TRACKING_DIR": str(root / "tracking"), "WANDB_API_KEY": SECRET}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = time.monotonic()
        defs = build_definitions(root / "recipes", NewtStore(root=str(root / "store")))
        selection = [a for a in defs.assets if a.key.path[-1] in ("dataset", "prepared", "trained")]
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(selection, resources=defs.resources, instance=instance)
        took = time.monotonic() - started
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    [trained] = [e.materialization for e in result.get_asset_materialization_events()
                 if e.materialization.asset_key.path[-1] == "trained"]
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    print(f"tracked training through Dagster: {took:.1f} s")
    # tables (loss_history) as their rows; every other entry as its value
    meta = {k: [r.data for r in v.records] if isinstance(v, dg.TableMetadataValue) else v.value
            for k, v in trained.metadata.items()}
    return {"run_id": result.run_id, "meta": meta, "logs": logs,
            "key": trained.metadata["key"].value, "root": root, "url": mlflow_server}


def test_tracker_keys_switch_trackers_on_and_stay_out_of_every_key() -> None:
    from newt import STAGES
    from newt.config import stage_fields
    from newt.tracking import flat_params, public_uri, trackers

    base = "base_model: m\ndatasets: [{path: d.jsonl}]\n"
    assert trackers(parse_recipe(base)) == []
    assert trackers(parse_recipe(base + "wandb_project: p\nuse_tensorboard: true\n")) == ["wandb", "tensorboard"]
    assert trackers(parse_recipe(base + "mlflow_experiment_name: e\nreport_to: [wandb]\nwandb_mode: disabled\n")) \
        == ["mlflow"]
    tracked = parse_recipe(base + "report_to: [mlflow, wandb, tensorboard]\nwandb_entity: team\nwandb_name: n\n"
                           "wandb_run_id: abc\nmlflow_tracking_uri: http://host:5000\n"
                           "resume_from_checkpoint: true\n")
    assert trackers(tracked) == ["mlflow", "wandb", "tensorboard"]
    for stage in STAGES:
        assert stage_fields(tracked, stage) == stage_fields(parse_recipe(base), stage), stage
    assert public_uri("http://u:pw@host:5000/x") == "http://host:5000/x"  # e.g. from MLFLOW_TRACKING_URI
    with pytest.raises(RecipeError, match=r"mlflow_tracking_uri: got 'http://u:pw@host:5000'; the URI carries "
                                          r"credentials \(user:password@\); remove them and export "
                                          r"MLFLOW_TRACKING_USERNAME"):
        parse_recipe(base + "mlflow_tracking_uri: http://u:pw@host:5000\n")
    assert public_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert flat_params({"lr": 0.002, "eval": {"thresholds": {}}, "datasets": [{"path": "d"}], "roles": ["a", "b"],
                        "rl": None}) == {"recipe.lr": "0.002", "recipe.eval.thresholds": "{}",
                                         "recipe.datasets.0.path": "d", "recipe.roles": '["a", "b"]',
                                         "recipe.rl": "null"}


def test_mlflow_server_receives_the_run_with_metrics_params_and_identity(tracked) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked["url"])
    experiment = client.get_experiment_by_name("newt-tracking-test")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    for metric in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [1, 2, 3], metric
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert losses == pytest.approx([row["loss"] for row in tracked["meta"]["loss_history"]], abs=1e-5)
    params, tags = run.data.params, run.data.tags
    assert params["recipe.learning_rate"] == "0.002" and params["recipe.lora_r"] == "4"
    assert params["recipe.datasets.0.type"] == "chat_template"
    assert tags["newt.dagster_run_id"] == tracked["run_id"] and tags["newt.stage_key"] == tracked["key"]
    assert tags["newt.recipe_name"] == "tiny"
    local = client.download_artifacts(run.info.run_id, "newt_recipe.json", str(tracked["root"] / "dl"))
    assert json.loads(Path(local).read_text())["max_steps"] == 3
    assert tracked["meta"]["mlflow_run_url"] == (f"{tracked['url']}/#/experiments/{experiment.experiment_id}/runs/"
                                                 f"{run.info.run_id}")


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte `:W&B` header, then LevelDB-log framed chunks
    (32 KiB blocks; 7-byte chunk headers: crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4), each record a
    `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_run_folder_holds_every_step_and_the_recipe(tracked) -> None:
    folder = Path(tracked["meta"]["wandb_run_dir"])
    assert folder.parent == tracked["root"] / "tracking" / "wandb" and folder.name.startswith("offline-run-")
    [run_file] = folder.glob("run-*.wandb")
    records = wandb_records(run_file)
    steps = []
    config: dict = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            if "train/loss" in row:
                steps.append(row)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "run":
            assert r.run.run_id == tracked["meta"]["wandb_run_id"] and r.run.display_name == "tiny"
            assert r.run.project == "newt-test"
    assert [s["train/global_step"] for s in steps] == [1, 2, 3]
    assert all({"train/learning_rate", "train/grad_norm", "train/tokens_per_second"} <= set(s) for s in steps)
    assert [s["train/loss"] for s in steps] == pytest.approx([r["loss"] for r in tracked["meta"]["loss_history"]],
                                                             abs=1e-5)
    assert config["recipe"]["lora_r"] == 4 and config["recipe"]["max_steps"] == 3
    assert config["newt.dagster_run_id"] == tracked["run_id"] and config["newt.stage_key"] == tracked["key"]


def test_tensorboard_event_files_hold_every_step(tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(tracked["meta"]["tensorboard_logdir"])
    assert logdir.parent == tracked["root"] / "tracking" / "tensorboard" / "tiny"
    assert logdir.name.startswith(tracked["key"][:12] + "-" + tracked["run_id"][:8])
    events = EventAccumulator(str(logdir))
    events.Reload()
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3], tag
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in tracked["meta"]["loss_history"]], abs=1e-4)
    assert "newt/recipe/text_summary" in events.Tags()["tensors"]


def test_secrets_never_reach_metadata_or_logs(tracked) -> None:
    text = json.dumps(tracked["meta"], default=str) + "\n".join(tracked["logs"])
    assert SECRET not in text
    assert tracked["meta"]["mlflow_run_url"].startswith(tracked["url"])  # the link is there, the secret is not


def test_start_translates_the_recipe_into_report_to_and_the_trackers_environment(tmp_path, monkeypatch) -> None:
    from newt.tracking import start

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "WANDB_PROJECT",
                "WANDB_DIR", "WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_ENTITY", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NEWT_TRACKING_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_RUN_ID", "left-over")
    recipe = parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\nreport_to: [mlflow, tensorboard]\n"
                          "wandb_project: p\nwandb_entity: team\nwandb_mode: offline\nwandb_run_id: r1\n")
    track = start(recipe, "demo", "0123456789abcdef", "run-id-1234")
    assert track.kwargs == {"report_to": ["mlflow", "wandb", "tensorboard"], "run_name": "demo"}
    env = os.environ
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db" and "MLFLOW_RUN_ID" not in env
    assert env["MLFLOW_EXPERIMENT_NAME"] == "demo"
    assert json.loads(env["MLFLOW_TAGS"]) == {"newt.recipe_name": "demo", "newt.stage_key": "0123456789abcdef",
                                              "newt.dagster_run_id": "run-id-1234"}
    assert (env["WANDB_PROJECT"], env["WANDB_ENTITY"], env["WANDB_MODE"], env["WANDB_RUN_ID"], env["WANDB_RESUME"],
            env["WANDB_DIR"]) == ("p", "team", "offline", "r1", "allow", str(tmp_path))
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard" / "demo" / "0123456789ab-run-id-1")
    assert track.params["recipe"]["wandb_project"] == "p"
    off = start(parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\n"), "demo", "k", None)
    assert off.kwargs == {"report_to": "none", "run_name": "demo"}
