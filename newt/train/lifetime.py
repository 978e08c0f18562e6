"""A training child lives exactly as long as the run that started it.

The chain is: the run's process (the Dagster step: `newt run` itself, or a step worker) → `accelerate launch` →
the training processes (`newt.train.sft` ...; one per rank). When the run's process dies by any signal, kill -9
included, nothing of the chain may keep training into the key's work folder, and nothing may hold the folder
while the rerun resumes from its last checkpoint.

Launcher side (`start`, `stop`): the command runs in its own process group (a Ctrl-C in the terminal reaches only
the run, which then stops the group itself: no `KeyboardInterrupt` traceback from each process), and on Linux the
kernel sends it SIGKILL when the launching thread's process dies (`PR_SET_PDEATHSIG`).

Child side (`die_with_parent`, called first by every training child): the same parent-death signal for its own
parent (accelerate), plus a watcher thread that polls the processes named in `NEWT_WATCH_PIDS` (the run's
process, and its parent when that is Dagster's step launcher) and ends the child's whole process group when one
is gone — the fallback where there is no prctl, and the guard against a launcher (accelerate, torchrun) that
outlives its own parent. SIGTERM ends a child quietly with status 143.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

WATCH_ENV = "NEWT_WATCH_PIDS"  # "host pid:starttime,pid:starttime" (starttime guards against a reused pid)
POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ChildFailed(RuntimeError):
    """The training command exited non-zero (its own output, above in the log, says why)."""

    def __init__(self, returncode: int, cmd: Sequence[str]):
        how = f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with code {returncode}"
        super().__init__(f"training child failed: it {how} (its output above says why); the work folder keeps its "
                         f"checkpoints, so a rerun resumes from the last one. Command: {' '.join(cmd)}")
        self.returncode = returncode


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), '' where /proc is absent, None if it is gone
    or a zombie (a killed process its parent has not reaped yet is gone for our purposes)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - a one-shot read of a tiny proc file
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # the command name (field 2) may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of proc(5), counted after the name


def alive(pid: int, started: str | None = None) -> bool:
    """Whether `pid` runs and (given its recorded start time) is still the same process."""
    if sys.platform != "linux":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = process_start(pid)
    if now is None:
        return False
    return not started or not now or now == started


def identity(pid: int) -> str:
    """`pid:starttime`, the form `NEWT_WATCH_PIDS` and the run tags use."""
    return f"{pid}:{process_start(pid) or ''}"


def parse_identity(text: str) -> tuple[int, str]:
    pid, _, started = text.partition(":")
    return int(pid), started


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _child_setup() -> None:  # runs in the forked child before exec
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # `&` in a script starts us with SIGINT ignored; undo for
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the child so that stop() can end it


def run_processes() -> list[int]:
    """The processes a run lives in, seen from its step: this one, and Dagster's run worker when the step is a
    subprocess of it (the multiprocess executor starts steps through `multiprocessing`)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return [os.getpid(), *([parent.pid] if parent is not None and parent.pid else [])]


def watch_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus `NEWT_WATCH_PIDS` naming the run's processes: the ones a training child dies with. The host
    name comes along: a child on another machine (a pod, a Ray node) cannot see them and watches nothing."""
    return {**env, WATCH_ENV: socket.gethostname() + " " + ",".join(identity(p) for p in run_processes())}


def start(cmd: Sequence[str], env: Mapping[str, str], **popen: object) -> subprocess.Popen:
    """Start `cmd` in its own process group, killed by the kernel when this process dies (Linux)."""
    return subprocess.Popen(list(cmd), env=dict(env), start_new_session=True, preexec_fn=_child_setup,
                            **popen)  # type: ignore[arg-type]


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End the child's whole process group: SIGTERM, then SIGKILL after `grace_s`. Safe when it already ended."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # the group lives on while any member (a rank) does, even after the leader exited
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.05)
        else:
            continue
        break
    proc.poll()


def die_with_parent() -> None:
    """Called first by every training child: end this process when its launcher or the run's process is gone."""
    set_parent_death_signal()
    # Quiet ends: the run that stops us reports why; a traceback per rank would only bury that message.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    host, _, pids = os.environ.get(WATCH_ENV, "").partition(" ")
    watched = [parse_identity(p) for p in pids.split(",") if p]
    if watched and host == socket.gethostname():
        threading.Thread(target=_watch, args=(watched,), name="newt-watch-run", daemon=True).start()


def _watch(watched: list[tuple[int, str]]) -> None:
    while all(alive(pid, started) for pid, started in watched):
        time.sleep(POLL_S)
    # The run is gone: stop the whole group (accelerate and the other ranks) when it is ours alone; otherwise
    # (started by hand, no session of its own) only this process.
    if os.getpgrp() == os.getsid(0) and os.getpgrp() != os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
