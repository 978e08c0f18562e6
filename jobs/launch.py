"""`python -m jobs.launch JOB`: run a job the way the UI does — launched through the workspace — and wait for it.

`make demo` uses this. A run launched through the workspace (workspace.yaml: code location `newt`) carries the
code location as its origin, so the UI lists it in the job's Runs tab and on the Overview timeline; a run of
`dagster job execute -m definitions` has no origin and shows in neither.

The instance queues launched runs (Dagster's default run coordinator), so a `dagster-daemon` runs for the
duration: it dequeues the run, starts its run worker through the code location, and does Dagster's run
monitoring. The daemon runs in its own process group, dies with this process, and is stopped at the end.
Progress is read back from the run's events; the exit status is 0 only for a successful run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from newt.train import lifetime

CHECKOUT = Path(__file__).resolve().parents[1]
STEP_EVENTS = {dg.DagsterEventType.STEP_START: "▶", dg.DagsterEventType.STEP_SUCCESS: "✓",
               dg.DagsterEventType.STEP_FAILURE: "✗"}
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def wait(instance: dg.DagsterInstance, run_id: str, daemon: subprocess.Popen, poll_s: float = 1.0) -> str:
    """Print the run's step events until it finishes; its final status."""
    cursor = None
    while True:
        conn = instance.get_records_for_run(run_id, cursor=cursor, of_type=set(STEP_EVENTS))
        cursor = conn.cursor
        for record in conn.records:
            event = record.event_log_entry.dagster_event
            if event is not None:
                print(f"{STEP_EVENTS[event.event_type]} {event.step_key}", file=sys.stderr, flush=True)
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in FINISHED:
            return run.status.value
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited ({daemon.returncode}) before run {run_id} finished; "
                               "see its output above")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="job name, e.g. demo_job")
    parser.add_argument("-w", "--workspace", default=str(CHECKOUT / "workspace.yaml"))
    parser.add_argument("-o", "--op-selection", help="only these steps (dagster job launch -o), e.g. demo__dataset")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("python -m jobs.launch: set DAGSTER_HOME (the UI must read the same run history)", file=sys.stderr)
        return 2
    bin_dir = Path(sys.executable).parent
    run_id = str(uuid.uuid4())
    # The instance's storage is created here first: a daemon and `dagster job launch` creating a fresh
    # DAGSTER_HOME's SQLite schemas at the same moment fail ("more than one head").
    with dg.DagsterInstance.get() as instance:
        instance.get_run_records(limit=1)
        daemon = lifetime.start([str(bin_dir / "dagster-daemon"), "run", "-w", args.workspace], os.environ)
        try:
            select = ["-o", args.op_selection] if args.op_selection else []
            subprocess.run([str(bin_dir / "dagster"), "job", "launch", "-w", args.workspace, "-j", args.job,
                            "--run-id", run_id, *select], check=True, cwd=Path(args.workspace).parent)
            status = wait(instance, run_id, daemon)
        finally:
            lifetime.stop(daemon)
    print(f"{args.job}: run {run_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
