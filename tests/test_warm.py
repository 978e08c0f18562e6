"""The warm training process (newt/train/warm.py): launches run as forks of one server with their own environment,
folder, arguments and streams; exit statuses come back as `subprocess.Popen` gives them; the child dies with its
launcher and with the server; a server that cannot start leaves the launch to a fresh process; and a tiny recipe
trains to the same losses and weights in a fork as in a fresh process.

The launches go through a small launcher program (a real process, as a Dagster step is) whose environment is the
launch's; the probe module (tests/warm_probe.py) reports what it sees. The suite runs with NEWT_WARM=0
(tests/conftest.py); each test here switches it on in its own environment, with a variable of its own so that its
servers are its own, and stops them at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from newt.train import warm
from newt.train.lifetime import alive

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import json, os, sys
from newt.train import warm
runtime = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
os.environ.update(runtime)  # as a library imported by an earlier stage does (sklearn's KMP_DUPLICATE_LIB_OK)
child = warm.start(json.loads(sys.argv[1]), {**json.loads(sys.argv[2]), **runtime})
if child is None:
    print("launcher: not warm", file=sys.stderr)
    sys.exit(99)
print(f"launcher: child {child.pid}", file=sys.stderr, flush=True)
print(f"launcher: returncode {child.wait()}", file=sys.stderr)
"""


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest):
    before = set(warm.servers())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "NEWT_WARM": "1",
           "ACCELERATE_USE_CPU": "True", "NEWT_CACHE_DIR": str(tmp_path / "cache"), "NEWT_WARM_IDLE_S": "120",
           "WARM_TEST": request.node.name}
    yield {"tmp": tmp_path, "env": env}
    new = set(warm.servers()) - before
    warm.stop_servers(new)
    deadline = time.monotonic() + 20
    while set(warm.servers()) & new and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(warm.servers()) & new, "a warm server did not stop when asked"


def launch(lab: dict, *args: str, env: dict | None = None, stdin: str = "", wait: bool = True,
           runtime: dict | None = None):
    """Launch the probe from a launcher process started with `env`, which sets `runtime` in its own environment
    first; (exit status, stdout, stderr), or the launcher's Popen when not `wait`."""
    cmd = [sys.executable, "-m", "warm_probe", *args]
    env = env or lab["env"]
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(cmd), json.dumps(env),
                             json.dumps(runtime or {})], env=env,
                            cwd=lab["tmp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait:
        return proc
    out, err = proc.communicate(stdin, timeout=120)
    return proc.returncode, out, err


def returncode(err: str) -> int:
    return int(err.strip().splitlines()[-1].removeprefix("launcher: returncode "))


def test_launches_are_forks_of_one_server_with_their_own_environment_folder_and_streams(lab) -> None:
    one, two = lab["tmp"] / "one.json", lab["tmp"] / "two.json"
    rc, out, err = launch(lab, "report", str(one), stdin="line one\n")
    assert rc == 0 and returncode(err) == 0, err
    assert "newt: starting a warm training process for warm_probe" in err
    assert out == "probe stdout\n" and "probe stderr\n" in err  # the launcher's own streams
    # The per-launch variables (the run's processes, Dagster Pipes' bootstrap) differ and do not pick the server.
    env = {**lab["env"], "NEWT_WATCH_PIDS": "host 1:2", "DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "m"}
    rc, out, err = launch(lab, "report", str(two), env=env, stdin="line two\n")
    assert rc == 0 and "starting a warm" not in err, err
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["ppid"] == b["ppid"] != a["pid"] != b["pid"]  # two forks of one server
    assert warm.servers() and all(s["sid"] == s["pgid"] == s["pid"] for s in (a, b))  # own session and group
    assert (a["stdin"], b["stdin"]) == ("line one\n", "line two\n")
    assert a["cwd"] == b["cwd"] == str(lab["tmp"]) and a["name"] == "__main__"
    assert a["argv"][1:] == ["report", str(one)] and a["argv"][0].endswith("warm_probe.py")  # as `python -m`
    assert b["env"] == env and a["env"] == lab["env"]  # exactly the launch's environment
    assert a["numpy"] != b["numpy"]  # numpy's global generator seeded afresh, as in a fresh process


def test_another_environment_gets_another_server(lab) -> None:
    one, two = lab["tmp"] / "one.json", lab["tmp"] / "two.json"
    assert launch(lab, "report", str(one))[0] == 0
    rc, _, err = launch(lab, "report", str(two), env={**lab["env"], "HF_HUB_OFFLINE": "1"})
    assert rc == 0 and "starting a warm training process" in err, err
    assert json.loads(one.read_text())["ppid"] != json.loads(two.read_text())["ppid"]


def test_variables_set_inside_the_launching_process_do_not_pick_the_server_but_reach_the_child(lab) -> None:
    one, two = lab["tmp"] / "one.json", lab["tmp"] / "two.json"
    assert launch(lab, "report", str(one))[0] == 0
    rc, _, err = launch(lab, "report", str(two), runtime={"WARM_TEST_SET_AT_RUNTIME": "yes"})
    assert rc == 0 and "starting a warm" not in err, err
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["ppid"] == b["ppid"]
    assert "WARM_TEST_SET_AT_RUNTIME" not in a["env"] and b["env"]["WARM_TEST_SET_AT_RUNTIME"] == "yes"


def test_exit_codes_signals_and_exceptions_come_back_as_a_fresh_process_gives_them(lab) -> None:
    report = lab["tmp"] / "r.json"
    assert returncode(launch(lab, "report", str(report), env={**lab["env"], "PROBE_EXIT": "3"})[2]) == 3
    assert returncode(launch(lab, "signal")[2]) == -signal.SIGTERM
    _, _, err = launch(lab, "raise")
    assert returncode(err) == 1
    assert "Traceback" in err and "ValueError: probe failed on purpose" in err


def child_pid(path: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    while not (path.is_file() and path.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the probe never started"
        time.sleep(0.05)
    return int(path.read_text())


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.02)
    return True


def test_a_child_dies_with_its_launcher_killed_by_sigkill(lab) -> None:
    pid_file = lab["tmp"] / "pid"
    proc = launch(lab, "sleep", str(pid_file), wait=False)
    pid = child_pid(pid_file, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert gone_within(pid, 5), "the child outlived its launcher"


def test_a_child_dies_with_its_server_and_the_launcher_hears_sigkill(lab) -> None:
    pid_file = lab["tmp"] / "pid"
    proc = launch(lab, "sleep", str(pid_file), wait=False)
    pid = child_pid(pid_file, proc)
    server = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(server, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert gone_within(pid, 5), "the child outlived its server"
    assert returncode(err) == -signal.SIGKILL


def test_a_server_that_cannot_start_leaves_the_launch_to_a_fresh_process(lab) -> None:
    cmd = [sys.executable, "-m", "warm_probe_that_does_not_exist"]
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, json.dumps(cmd), json.dumps(lab["env"])], env=lab["env"],
                          cwd=lab["tmp"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 99, proc.stderr
    assert "newt: the warm training process exited with code 1 before it was ready (its log: " in proc.stderr
    log = next((lab["tmp"] / "cache" / "warm").glob("*.log")).read_text()
    assert "No module named 'warm_probe_that_does_not_exist'" in log


@pytest.mark.parametrize("change", [{"NEWT_WARM": "0"}, {"ACCELERATE_USE_CPU": ""}], ids=["switched-off", "gpu"])
def test_no_server_when_switched_off_or_not_on_the_cpu(lab, change: dict) -> None:
    env = {**lab["env"], **change}
    assert not warm.enabled([sys.executable, "-m", "warm_probe"], env)
    rc, _, err = launch(lab, "report", str(lab["tmp"] / "r.json"), env=env)
    assert rc == 99 and "starting a warm" not in err


def test_an_idle_server_exits(lab) -> None:
    env = {**lab["env"], "NEWT_WARM_IDLE_S": "0.5"}
    before = set(warm.servers())
    assert launch(lab, "report", str(lab["tmp"] / "r.json"), env=env)[0] == 0
    deadline = time.monotonic() + 10
    while set(warm.servers()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(warm.servers()) - before, "the idle server is still there"


def train_through_the_cli(recipe: Path, tmp_path: Path, lab: dict, side: str, switch: str) -> tuple[str, list, dict]:
    """`newt run` up to `trained` in the store of `side`; (stderr, the losses, the adapter's tensors)."""
    from safetensors.numpy import load_file

    from newt.config import load_recipe
    from newt.pipeline import plan

    env = {**lab["env"], "NEWT_WARM": switch, "NEWT_STORE": str(tmp_path / side / "store"),
           "DAGSTER_HOME": str(tmp_path / side / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU")  # accelerate's launch decides it, as in any run
    (tmp_path / side / "home").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "newt.cli", "run", str(recipe), "--stages", "dataset,prepared,trained"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    key = plan(load_recipe(recipe), ("trained",))["trained"].key
    folder = tmp_path / side / "store" / "trained" / key
    metrics = json.loads((folder / "metrics.json").read_text())
    return proc.stderr, metrics["loss_history"], load_file(folder / "adapter" / "adapter_model.safetensors")


def assert_same_training(a: tuple[str, list, dict], b: tuple[str, list, dict]) -> None:
    assert [row["loss"] for row in a[1]] == [row["loss"] for row in b[1]] and a[1]
    assert a[2].keys() == b[2].keys()
    assert all((a[2][k] == b[2][k]).all() for k in a[2])


def test_a_recipe_trains_in_a_fork_exactly_as_in_a_fresh_process(tiny_recipe_file, tmp_path: Path, lab) -> None:
    """A learning-rate change then trains in the first run's server; each warm run's losses and adapter weights
    equal a fresh process's on the same recipe (one thread: CPU training is deterministic)."""
    recipes = {lr: tiny_recipe_file(f"lr{lr}", f"learning_rate: {lr}") for lr in (0.002, 0.003)}
    for lr, starts in ((0.002, True), (0.003, False)):
        cold = train_through_the_cli(recipes[lr], tmp_path, lab, "cold", "0")
        warm_run = train_through_the_cli(recipes[lr], tmp_path, lab, "warm", "1")
        assert "starting a warm training process" not in cold[0]
        assert ("newt: starting a warm training process for newt.train.sft" in warm_run[0]) is starts, warm_run[0]
        assert_same_training(warm_run, cold)


def test_dpo_trains_in_a_fork_exactly_as_in_a_fresh_process(tiny_recipe_file, tmp_path: Path, lab) -> None:
    from test_train_rl import write_pairs

    recipe = tiny_recipe_file("dpo", "rl: dpo\nmax_steps: 2\n")
    recipe.write_text(recipe.read_text().replace(str(tmp_path / "data" / "reversal.jsonl"),
                                                 str(write_pairs(tmp_path / "pairs.jsonl"))))
    cold = train_through_the_cli(recipe, tmp_path, lab, "cold", "0")
    warm_run = train_through_the_cli(recipe, tmp_path, lab, "warm", "1")
    assert "newt: starting a warm training process for newt.train.dpo" in warm_run[0]
    assert_same_training(warm_run, cold)


def test_an_unwritable_cache_folder_leaves_the_launch_to_a_fresh_process(lab) -> None:
    (lab["tmp"] / "not-a-folder").write_text("")
    env = {**lab["env"], "NEWT_CACHE_DIR": str(lab["tmp"] / "not-a-folder")}
    rc, _, err = launch(lab, "report", str(lab["tmp"] / "r.json"), env=env)
    assert rc == 99 and "newt: could not start a warm training process (" in err, err
    assert "this launch starts a fresh process" in err


def test_accelerates_own_launcher_is_never_forked(monkeypatch) -> None:
    """Several processes (or a config file): `accelerate launch` stays a fresh process, it starts the ranks."""
    from newt.train import launch as launch_module
    from newt.train import lifetime

    monkeypatch.setattr(warm, "start", lambda cmd, env: pytest.fail("accelerate's launcher went to the warm server"))
    monkeypatch.setattr(lifetime, "start", lambda cmd, env: ("fresh", cmd))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m",
           "newt.train.sft"]
    handle, ran = launch_module.start(cmd, {**os.environ, "NEWT_WARM": "1", "ACCELERATE_USE_CPU": "true"})
    assert handle == ("fresh", cmd) and ran == cmd
