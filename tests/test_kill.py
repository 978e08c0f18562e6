"""What users do to runs: kill -9 of `newt run` (twice in a row), kill -9 of the training child, Ctrl-C, SIGTERM.

Each test starts `newt run RECIPE --stages trained` as a real process (its own session, as from a terminal) with
a persistent DAGSTER_HOME whose dagster.yaml gives the `gpu` pool one slot, and strikes as soon as the training
child has written its first complete checkpoint. Then: no process of the run may remain (within 10 s), the next
`newt run` must complete (a dead run's slot would make it wait for ever) and its `trained` materialization must
say it resumed from a checkpoint > 0. The times are printed (`pytest -s`) for the issue's closing note.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan, run_stage
from newt.synthetic import write_reversal_jsonl
from newt.train.lifetime import alive

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("kill")
    data = write_reversal_jsonl(base / "data.jsonl", n=48)
    home = base / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home), "NEWT_STORE": str(base / "store"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return {"base": base, "data": data, "env": env, "store": Store(str(base / "store"))}


def recipe(lab: dict, name: str, learning_rate: float) -> Path:
    """A tiny recipe; `learning_rate` gives each test its own `trained` key (and work folder) over one shared
    `prepared` artifact, which is built here in-process (no Dagster: seconds)."""
    fields = {"base_model": "builtin:tiny-llama", "datasets": [{"path": str(lab["data"])}], "sequence_len": 64,
              "val_set_size": 8, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "micro_batch_size": 4,
              "max_steps": 16, "save_steps": 2, "logging_steps": 1, "learning_rate": learning_rate}
    path = lab["base"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fields))
    r = load_recipe(path)
    keys = plan(r, ("prepared",))
    for stage in ("dataset", "prepared"):
        run_stage(r, stage, lab["store"], keys=keys, log=lambda _: None)
    return path


def work_folder(lab: dict, recipe_file: Path) -> Path:
    key = plan(load_recipe(recipe_file), ("trained",))["trained"].key
    return Path(lab["store"].path("trained", key).rsplit("/", 1)[0]) / f".work-{key}"


def start(lab: dict, recipe_file: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "newt.cli", "run", str(recipe_file), "--stages", "trained"],
                                cwd=lab["base"], env=lab["env"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def processes_with(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (the work folder: accelerate and every rank)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            out.append(int(proc.name))
    return out


def wait_for_checkpoint(proc: subprocess.Popen, work: Path, log: Path, timeout: float = 300) -> None:
    """Until this run wrote a complete checkpoint of its own (one an earlier, killed run left does not count)."""
    deadline = time.monotonic() + timeout
    before = set(work.glob("checkpoints/checkpoint-*/trainer_state.json"))
    while not set(work.glob("checkpoints/checkpoint-*/trainer_state.json")) - before:
        if proc.poll() is not None:
            pytest.fail(f"newt run ended (exit {proc.returncode}) before a checkpoint:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def seconds_until_no_child(work: Path, limit: float = 10.0) -> float:
    started = time.monotonic()
    while processes_with(str(work)):
        if time.monotonic() - started > limit:
            left = processes_with(str(work))
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes of the dead run still alive after {limit} s: {left}")
        time.sleep(0.05)
    return time.monotonic() - started


def rerun(lab: dict, recipe_file: Path, log: Path) -> tuple[str, float]:
    started = time.monotonic()
    proc = start(lab, recipe_file, log)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the rerun did not finish (a dead run's pool slot?):\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text, time.monotonic() - started


def trained_metadata(lab: dict, name: str) -> dict:
    import dagster as dg

    with dg.DagsterInstance.from_config(lab["env"]["DAGSTER_HOME"]) as instance:
        records = instance.fetch_materializations(dg.AssetKey([name, "trained"]), limit=1).records
        meta = records[0].asset_materialization.metadata
        return {k: getattr(v, "value", v) for k, v in meta.items()}


def run_statuses(lab: dict, run_ids: list[str] | None = None) -> dict[str, str]:
    import dagster as dg

    with dg.DagsterInstance.from_config(lab["env"]["DAGSTER_HOME"]) as instance:
        return {r.dagster_run.run_id: r.dagster_run.status.value for r in instance.get_run_records()
                if run_ids is None or r.dagster_run.run_id in run_ids}


def test_two_runs_killed_with_sigkill_in_a_row_then_the_rerun_resumes(lab, tmp_path: Path) -> None:
    recipe_file = recipe(lab, "kill_parent", 0.002)
    work = work_folder(lab, recipe_file)
    before = set(run_statuses(lab))
    for attempt in (1, 2):
        proc = start(lab, recipe_file, tmp_path / f"run{attempt}.log")
        wait_for_checkpoint(proc, work, tmp_path / f"run{attempt}.log")
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 <newt run>` from a shell
        proc.wait()
        took = seconds_until_no_child(work)
        print(f"\nkill -9 newt run #{attempt}: no child left after {took:.2f} s")
    dead = set(run_statuses(lab)) - before
    # Dagster leaves a killed run STARTED for ever; the second `newt run` marked the first one failed as it began.
    assert sorted(run_statuses(lab, list(dead)).values()) == ["FAILURE", "STARTED"]
    marked = "had no process left (killed?): marked failed, its slots freed"
    assert marked in (tmp_path / "run2.log").read_text()

    text, took = rerun(lab, recipe_file, tmp_path / "rerun.log")
    print(f"rerun after two dead runs: start to done {took:.1f} s")
    assert text.count(marked) == 1, text[-3000:]
    assert sorted(run_statuses(lab, list(dead)).values()) == ["FAILURE", "FAILURE"]
    meta = trained_metadata(lab, "kill_parent")
    assert meta["global_step"] == 16 and meta["resumed_from_step"] > 0, meta


def test_training_child_killed_fails_the_run_with_newts_message_and_the_rerun_resumes(lab, tmp_path: Path) -> None:
    recipe_file = recipe(lab, "kill_child", 0.003)
    work = work_folder(lab, recipe_file)
    log = tmp_path / "run.log"
    proc = start(lab, recipe_file, log)
    wait_for_checkpoint(proc, work, log)
    cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in processes_with(str(work))}
    ranks = [p for p, cmd in cmdlines.items() if b"newt.train.sft" in cmd and b"accelerate" not in cmd]
    assert len(ranks) == 1, ranks
    os.kill(ranks[0], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    took = seconds_until_no_child(work)
    print(f"\nkill -9 training child: no child left after {took:.2f} s")
    text = log.read_text()
    # A one-process run starts the child itself (newt/train/launch.py): newt sees the signal, no launcher
    # process in between turns it into an exit code and a traceback of its own.
    assert "✗ trained failed: training child failed: it was killed by SIGKILL (its output above says why); the " \
           "work folder keeps its checkpoints, so a rerun resumes from the last one." in text, text[-3000:]
    assert text.count("Traceback") == 0, text[-3000:]

    text, took = rerun(lab, recipe_file, tmp_path / "rerun.log")
    print(f"rerun after the child was killed: start to done {took:.1f} s")
    meta = trained_metadata(lab, "kill_child")
    assert meta["global_step"] == 16 and meta["resumed_from_step"] > 0, meta


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_the_run_in_one_line(lab, tmp_path: Path, sig: signal.Signals) -> None:
    recipe_file = recipe(lab, f"stop_{sig.name.lower()}", 0.004 if sig == signal.SIGINT else 0.005)
    work = work_folder(lab, recipe_file)
    log = tmp_path / "run.log"
    before = set(run_statuses(lab))
    proc = start(lab, recipe_file, log)
    wait_for_checkpoint(proc, work, log)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=60) == 128 + sig, log.read_text()[-3000:]
    assert not processes_with(str(work)), "the training child outlived the stopped run"
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"newt run stop_{sig.name.lower()}: stopped by {sig.name} after "), last
    assert "a rerun resumes training from its last checkpoint" in last
    (run_id,) = set(run_statuses(lab)) - before
    assert run_statuses(lab, [run_id])[run_id] in ("FAILURE", "CANCELED")  # finished: its slot is free


def warm_children() -> list[int]:
    """Live forks of warm training servers (newt/train/warm.py): their command line is their server's."""
    stat = {}
    for pid in processes_with("newt.train.warm"):
        try:
            stat[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    servers = {pid for pid, parent in stat.items() if parent not in stat}
    return [pid for pid, parent in stat.items() if parent in servers]


def test_kill_9_of_newt_run_ends_a_child_forked_from_the_warm_server(lab, tmp_path: Path) -> None:
    from newt.train import warm

    recipe_file = recipe(lab, "kill_warm", 0.006)
    work = work_folder(lab, recipe_file)
    before = set(warm.servers())
    warm_lab = {**lab, "env": {**lab["env"], "NEWT_WARM": "1"}}
    try:
        proc = start(warm_lab, recipe_file, tmp_path / "run.log")
        wait_for_checkpoint(proc, work, tmp_path / "run.log")
        children = warm_children()
        assert len(children) == 1, (children, (tmp_path / "run.log").read_text()[-2000:])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        started = time.monotonic()
        while any(alive(pid) for pid in children):
            assert time.monotonic() - started < 10, "the warm child outlived the killed run"
            time.sleep(0.02)
        print(f"\nkill -9 newt run (warm child): no child left after {time.monotonic() - started:.2f} s")
        text, took = rerun(warm_lab, recipe_file, tmp_path / "rerun.log")
        print(f"rerun in the warm server: start to done {took:.1f} s")
        assert "starting a warm training process" not in text  # the first run's server trained it
        meta = trained_metadata(lab, "kill_warm")
        assert meta["global_step"] == 16 and meta["resumed_from_step"] > 0, meta
    finally:
        warm.stop_servers(set(warm.servers()) - before)
