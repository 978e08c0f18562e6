"""The Ray launcher on a real two-node Ray cluster on 127.0.0.1 (a head and one more node, separate processes, each
with its own temp dir): the `trained` stage trains with world size 2 across both nodes, reporting through Pipes,
and a killed worker process is survived by restarting from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not listen on {port} within {timeout} s:\n{log.read_text()[-3000:]}")


def _alive_nodes(address: str) -> list[str]:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM our `ray start --block` (it stops the node's services), then SIGKILL, by PID, any process left
    whose command line names this node's own temp dir: only processes this fixture started."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in (p.info["cmdline"] or [])):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict]:
    """A Ray head plus one more node on 127.0.0.1, 1 CPU each; yields {"address", "node_ids"}."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    started: list[tuple[subprocess.Popen, str]] = []
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block"]
    try:
        for i, extra in enumerate([
            ["--head", "--port", str(port), "--include-dashboard", "false",
             "--ray-client-server-port", str(_free_port())],
            ["--address", f"127.0.0.1:{port}"],
        ]):
            temp_dir = tempfile.mkdtemp(prefix=f"r19-{i}-", dir="/tmp")  # short: Ray's socket paths have a limit
            log = Path(temp_dir) / "start.log"
            cmd = [RAY, "start", *extra, *common, "--temp-dir", temp_dir,
                   "--dashboard-agent-listen-port", str(_free_port())]
            proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            started.append((proc, temp_dir))
            if i == 0:
                _wait_listening(port, proc, log)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while len(nodes := _alive_nodes(address)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} Ray node(s) came up; logs under {[t for _, t in started]}")
            time.sleep(2)
        yield {"address": address, "node_ids": set(nodes)}
    finally:
        for proc, temp_dir in reversed(started):
            _stop(proc, temp_dir)


def test_the_ray_launcher_is_chosen_by_environment_and_needs_an_address(monkeypatch) -> None:
    from newt.train.ray_job import RayLaunchError, address_from_env
    from resources import RayLauncher, launcher_from_env

    monkeypatch.setenv("NEWT_LAUNCHER", "ray://head.example:10001")
    chosen = launcher_from_env()
    assert isinstance(chosen, RayLauncher) and chosen.address == "ray://head.example:10001"
    assert address_from_env() == "ray://head.example:10001"
    monkeypatch.setenv("NEWT_LAUNCHER", "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert launcher_from_env().address is None
    with pytest.raises(RayLaunchError, match="set RAY_ADDRESS=HOST:PORT"):
        address_from_env()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert address_from_env() == "10.0.0.1:6379"


def test_trained_runs_across_two_ray_nodes_with_world_size_two_through_dagster(ray_cluster, tiny_recipe_file,
                                                                                 tmp_path: Path, monkeypatch) -> None:
    import dagster as dg

    from definitions import build_definitions
    from resources import NewtStore

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    recipes = tiny_recipe_file(extra="launcher: ray\nnum_machines: 2\nmax_steps: 2\n").parent
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    selection = [a for a in defs.assets if a.key.path[-1] in ("dataset", "prepared", "trained")]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(selection, resources=defs.resources, instance=instance)
    assert result.success
    [trained] = [e.materialization for e in result.get_asset_materialization_events()
                 if e.materialization.asset_key.path[-1] == "trained"]
    assert trained.metadata["world_size"].value == 2
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert sum("successfully opened dagster pipes" in m for m in logs) == 1, "only machine 0's rank 0 opens Pipes"
    assert any(m.startswith("step=2 loss=") for m in logs), "step metrics came back through Pipes"
    artifact = Path(trained.metadata["artifact"].value)
    [attempt] = json.loads((artifact / "launch.json").read_text())["attempts"]
    machines = attempt["machines"]
    assert [m["machine_rank"] for m in machines] == [0, 1]
    assert {m["node_id"] for m in machines} == ray_cluster["node_ids"], "one machine on each Ray node"
    assert not (artifact / ".pipes-messages.jsonl").exists()


def _kill_machine_1_worker_after_checkpoint_2(work: Path, killed: dict) -> threading.Thread:
    """Start a thread that SIGKILLs machine 1's training process (torch's agent's child) once checkpoint 2 exists."""
    import psutil

    def run() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:
            if (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
                attempt = json.loads((work / "launch.json").read_text())["attempts"][-1]
                workers = psutil.Process(attempt["machines"][1]["launch_pid"]).children(recursive=True)
                if workers:
                    workers[0].kill()
                    killed["pid"] = workers[0].pid
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _prepared_ray_recipe(tiny_recipe_file, tmp_path: Path, extra: str):
    from newt.cache import Store
    from newt.config import load_recipe
    from newt.pipeline import plan, run_stage

    recipe = load_recipe(tiny_recipe_file(extra="launcher: ray\nnum_machines: 2\nsave_steps: 2\n" + extra))
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe)
    for stage in ("dataset", "prepared"):
        run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    return recipe, store, keys


def test_a_killed_worker_process_is_restarted_from_the_last_checkpoint(ray_cluster, tiny_recipe_file,
                                                                        tmp_path: Path, monkeypatch) -> None:
    from newt.pipeline import run_stage

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    recipe, store, keys = _prepared_ray_recipe(tiny_recipe_file, tmp_path, "max_steps: 16\n")
    killed: dict = {}
    killer = _kill_machine_1_worker_after_checkpoint_2(store.workdir("trained", keys["trained"].key), killed)
    outcome = run_stage(recipe, "trained", store, keys=keys, log=print)
    killer.join(timeout=5)
    assert killed, "the worker was never killed (did training end before checkpoint 2?)"
    assert outcome.cache == "miss"
    metrics = outcome.metadata
    assert metrics["world_size"] == 2 and metrics["global_step"] == 16
    assert metrics["resumed_from_step"] >= 2, metrics["resumed_from_step"]
    attempts = json.loads((Path(outcome.uri) / "launch.json").read_text())["attempts"]
    assert len(attempts) == 2 and "failed" in attempts[0] and "failed" not in attempts[1]
    assert {m["node_id"] for m in attempts[1]["machines"]} == ray_cluster["node_ids"]


def test_without_restarts_a_killed_worker_fails_the_stage_and_commits_nothing(ray_cluster, tiny_recipe_file,
                                                                               tmp_path: Path, monkeypatch) -> None:
    from newt.pipeline import run_stage
    from newt.train.ray_job import RayLaunchError

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    recipe, store, keys = _prepared_ray_recipe(tiny_recipe_file, tmp_path, "max_steps: 16\nray_max_restarts: 0\n")
    work = store.workdir("trained", keys["trained"].key)
    killed: dict = {}
    killer = _kill_machine_1_worker_after_checkpoint_2(work, killed)
    with pytest.raises(RayLaunchError, match=r"failed 1 times \(ray_max_restarts: 0\)"):
        run_stage(recipe, "trained", store, keys=keys, log=print)
    killer.join(timeout=5)
    assert killed and not store.lookup("trained", keys["trained"].key).hit
    [attempt] = json.loads((work / "launch.json").read_text())["attempts"]
    assert "failed" in attempt
