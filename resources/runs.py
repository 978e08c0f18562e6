"""Which process a Dagster run lives in, and runs whose process is gone.

A run killed with SIGKILL (or by a machine that went away) stays STARTED in the instance for ever and keeps its
`gpu` pool slot, so every later run waits for a slot that is never freed. newt records the run's processes on
the run as tags (`newt/host`, `newt/processes`: `pid:starttime` of the run's process and, for a step of the
multiprocess executor, of its run worker) — at creation by `newt run`, and by every newt asset as it starts, so
runs of `dagster job execute` and of the UI carry them too. `mark_dead_runs`, called by `newt run` before it
starts, marks every unfinished run of this host whose processes are all gone as failed, through the instance, and
frees its pool slots. Runs on other hosts are left to Dagster's run monitoring (dagster.yaml), which needs a
daemon.
"""

from __future__ import annotations

import socket

import dagster as dg

from newt.train.lifetime import alive, identity, parse_identity, run_processes

TAG_HOST = "newt/host"
TAG_PROCESSES = "newt/processes"
UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def process_tags() -> dict[str, str]:
    return {TAG_HOST: socket.gethostname(), TAG_PROCESSES: ",".join(identity(p) for p in run_processes())}


def record_run_processes(context: dg.AssetExecutionContext) -> None:
    """Tag the running run with this step's processes (a no-op when they are recorded already)."""
    tags = process_tags()
    if all(context.run.tags.get(k) == v for k, v in tags.items()):
        return
    context.instance.add_run_tags(context.run_id, tags)


def run_is_dead(tags: dict[str, str]) -> bool:
    """A run of this host all of whose recorded processes are gone; False when it recorded none or runs
    elsewhere (nothing here can tell)."""
    if tags.get(TAG_HOST) != socket.gethostname() or not tags.get(TAG_PROCESSES):
        return False
    return not any(alive(*parse_identity(p)) for p in tags[TAG_PROCESSES].split(","))


def mark_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark every unfinished run of this host whose processes are gone as failed and free its pool slots; the
    ids of the runs marked."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=list(UNFINISHED), tags={TAG_HOST: socket.gethostname()})
    )
    marked = []
    for record in records:
        run = record.dagster_run
        if not run_is_dead(dict(run.tags)):
            continue
        instance.report_run_failed(
            run, f"newt: the process of this run is gone ({run.tags[TAG_PROCESSES]} on {run.tags[TAG_HOST]}; "
                 "killed?); marked failed so that its pool slots are freed. Rerun it: training resumes from "
                 "the last checkpoint it wrote.",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        marked.append(run.run_id)
    return marked
