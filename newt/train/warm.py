"""A warm training process: a launch after a knob change pays neither a Python start nor the library imports.

A fresh training child spends most of its start-up importing torch, transformers, peft, trl and datasets (≈5–7 s
of a ≈9 s stage overhead on 2 idle cores, docs/performance.md) before it reads a row; a plain `accelerate launch`
of a TRL script pays the same. So the first local launch of a training module starts a server that imports what
that module imports and then waits, and every launch — the first included — is a `fork` of the server that runs
the module as `python -m` would: with the launch's own environment, working folder, arguments and standard streams
(sent as file descriptors over a Unix socket). The child is an ordinary process in its own session; the launcher
gets its pid at once and its exit status when it ends (`Child`, shaped like `subprocess.Popen` for
`newt.train.lifetime.stop`).

Which server may run a launch (`server_key`): the same interpreter, working folder, module, newt sources,
installed distributions and environment — every variable except those that name the launch itself (`PER_LAUNCH`:
the run's processes to die with, Dagster Pipes' bootstrap variables), which the fork sets, and those changed
inside the launching process after it started (`server_environ`). Libraries read their environment at import (libgomp's OMP_*,
huggingface_hub's HF_* constants), so any other difference gets a server of its own.

Where: Linux only (fork, abstract Unix sockets, prctl), and only launches on the CPU. On a GPU machine the imports
initialize CUDA (bitsandbytes asks the device for its capability at import), and CUDA does not survive a fork:
those launches start a fresh process as before, as does everything when `NEWT_WARM=0`.

Lifetime: the server exits after `NEWT_WARM_IDLE_S` seconds (default 300) with no launch running; a child dies
with the server (parent-death signal), with the run (every training child's `NEWT_WATCH_PIDS` watcher) and with
the launching process — when its end of the socket closes (a `kill -9` included), the server kills the child's
process group. Only processes of the server's own user may connect (`SO_PEERCRED`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import dagster_pipes

from newt.train.lifetime import WATCH_ENV, set_parent_death_signal

SWITCH = "NEWT_WARM"  # 0 / false / no / off: every launch starts a fresh Python
IDLE_ENV = "NEWT_WARM_IDLE_S"
DEFAULT_IDLE_S = 300
READY_S = 600.0  # how long a launcher waits for a server it started to finish its imports
# Variables that differ on every launch and that no import reads: the fork sets them, they do not pick the server.
PER_LAUNCH = frozenset({WATCH_ENV, dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR,
                        dagster_pipes.DAGSTER_PIPES_MESSAGES_ENV_VAR})
PREFIX = "newt-warm-"
MAX_MESSAGE = 1 << 20  # one request: the launch's environment, argv and folder as JSON


def enabled(cmd: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether `cmd` (a `python -m module ...` child, after `newt.train.launch.direct`) may run from a warm
    process: on Linux, on the CPU, not switched off."""
    return (sys.platform == "linux" and len(cmd) >= 3 and cmd[1] == "-m" and cmd[0] == sys.executable
            and env.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
            and env.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"))


def server_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The part of a launch's environment that picks its server: all of it but `PER_LAUNCH` and the variables
    changed inside this process after it started. newt changes none in a launching process (the CLI, a Dagster
    step); libraries do (sklearn's `KMP_DUPLICATE_LIB_OK`, inductor's `TORCHINDUCTOR_CACHE_DIR`), depending on
    what an earlier stage happened to import, so that a rerun whose earlier stages were hits still finds the first
    run's server. The child gets the launch's whole environment either way, as a fresh process would. The price:
    Python code that sets a variable which libraries read at import (HF_HUB_OFFLINE, ...) in its own process and
    then launches through newt's API shares a server with launches that did not set it — set such variables before
    the process starts, or NEWT_WARM=0."""
    initial = _initial_environ()
    changed_here = {k for k, v in os.environ.items() if initial.get(k) != v}
    return {k: v for k, v in env.items()
            if k not in PER_LAUNCH and not (k in changed_here and os.environ.get(k) == v)}


def _initial_environ() -> dict[str, str]:
    """This process's environment as it was exec'd (Linux keeps it in /proc/self/environ)."""
    out = {}
    for item in Path("/proc/self/environ").read_bytes().split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            out[os.fsdecode(name)] = os.fsdecode(value)
    return out


def server_key(module: str, env: Mapping[str, str], cwd: str) -> str:
    """What a server's imports depend on, as a digest: it names the server's socket. `env` is the launch's
    `server_environ`."""
    from newt import codeversion

    sources = [(name, st.st_mtime_ns, st.st_size)
               for name, st in ((n, p.stat()) for n, p in codeversion.module_files().items())]
    material = {"python": sys.executable, "cwd": cwd, "module": module, "installed": codeversion.installed(),
                "newt": sources, "env": sorted(env.items())}
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def address(key: str) -> str:
    return f"\0{PREFIX}{os.getuid()}-{key}"  # abstract namespace: no file to leave behind


def servers() -> list[str]:
    """Keys of this user's running servers (their listening sockets, from /proc/net/unix)."""
    mine = f"@{PREFIX}{os.getuid()}-"
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return []
    return sorted({line.split()[-1][len(mine):] for line in lines if line.split()[-1].startswith(mine)})


def stop_servers(keys: Iterable[str] | None = None) -> None:
    """Ask this user's servers (all, or those of `keys`) to exit; each does once its running launches ended."""
    for key in servers() if keys is None else keys:
        conn = _connect(key)
        if conn is not None:
            with conn:
                try:
                    conn.send(json.dumps({"quit": True}).encode())
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------------- launcher side


class Child:
    """A training child forked by a warm server, seen from the launching process (what `subprocess.Popen` offers
    `lifetime.stop`: `pid`, `poll`, `wait`, `returncode`)."""

    def __init__(self, conn: socket.socket, pid: int):
        self.conn, self.pid, self.returncode = conn, pid, None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.conn], [], [], 0)[0]:
            self._read()
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._read()
        return self.returncode

    def _read(self) -> None:
        data = self.conn.recv(4096)
        # No status: the server died, and its children with it (their parent-death signal is SIGKILL).
        self.returncode = json.loads(data)["returncode"] if data else -signal.SIGKILL
        self.conn.close()


def start(cmd: Sequence[str], env: Mapping[str, str]) -> Child | None:
    """Run `cmd` as a fork of the warm server for it (started first when there is none); None when it cannot
    (not `enabled`, or the server failed to start: the caller starts a fresh process)."""
    if not enabled(cmd, env):
        return None
    module, cwd = cmd[2], os.getcwd()
    key = server_key(module, server_environ(env), cwd)
    # The server imports under the launch's own environment (less the per-launch variables), so the launch that
    # starts it is served exactly; later ones may differ from it only in what `server_environ` leaves out.
    conn = _connect(key) or _start_server(key, module, {k: v for k, v in env.items() if k not in PER_LAUNCH}, cwd)
    if conn is None:
        return None
    streams = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
    request = {"module": module, "argv": list(cmd[3:]), "env": dict(env), "cwd": cwd}
    try:
        socket.send_fds(conn, [json.dumps(request).encode()], streams)
        pid = json.loads(conn.recv(4096) or b"{}").get("pid")
    except OSError:
        pid = None
    finally:
        for fd in streams:
            if fd > 2:
                os.close(fd)
    if pid is None:  # the server went away between accepting and forking
        conn.close()
        return None
    return Child(conn, pid)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _connect(key: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(address(key))
    except OSError:
        conn.close()
        return None
    return conn


def log_path(key: str) -> Path:
    from newt.home import cache_dir

    return cache_dir() / "warm" / f"{key}.log"


def _start_server(key: str, module: str, env: dict[str, str], cwd: str) -> socket.socket | None:
    log = log_path(key)
    idle = env.get(IDLE_ENV, str(DEFAULT_IDLE_S))
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            server = subprocess.Popen([sys.executable, "-m", __name__, key, module], env=env, cwd=cwd,
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    except OSError as e:  # an unwritable cache folder, say: the launch itself must not fail for it
        print(f"newt: could not start a warm training process ({e}); this launch starts a fresh process",
              file=sys.stderr, flush=True)
        return None
    print(f"newt: starting a warm training process for {module} (later launches fork it; it exits after {idle} s "
          f"idle; {SWITCH}=0 turns it off)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        conn = _connect(key)
        if conn is not None:
            return conn
        if server.poll() is not None:
            conn = _connect(key)  # it lost the race for the key to another server: use that one
            if conn is None:
                print(f"newt: the warm training process exited with code {server.returncode} before it was ready "
                      f"(its log: {log}); this launch starts a fresh process", file=sys.stderr, flush=True)
            return conn
        time.sleep(0.05)
    server.kill()
    print(f"newt: the warm training process was not ready after {READY_S:.0f} s (its log: {log}); this launch "
          "starts a fresh process", file=sys.stderr, flush=True)
    return None


# ------------------------------------------------------------------------------------------------ server side


def warm_imports(module: str) -> None:
    """Import `module` (its module-level imports) and every name it imports inside its functions (`from trl import
    SFTTrainer` in `main`): what each launch would otherwise import itself. An import that fails is left to the
    launch, which meets it the same way a fresh process would."""
    importlib.import_module(module)
    origin = importlib.util.find_spec(module).origin
    for node in ast.walk(ast.parse(Path(origin).read_bytes())):
        if isinstance(node, ast.Import):
            wanted = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            wanted = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for name, attribute in wanted:
            try:
                imported = importlib.import_module(name)
                # Lazy packages (trl, transformers) import a name on access; a submodule needs its own import.
                if attribute is not None and getattr(imported, attribute, None) is None:
                    importlib.import_module(f"{name}.{attribute}")
            except Exception:  # noqa: BLE001 - any failure is the launch's own to meet
                pass


def serve(key: str, module: str) -> tuple[dict, list[int]] | None:
    """The server loop. Returns in the server when it is done (None), and in each forked child with the launch
    it is to become (its request and standard streams)."""
    idle_s = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_S)
    warm_imports(module)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("CUDA was initialized by the imports; a forked child could not use it: not serving", flush=True)
        return None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(address(key))
    except OSError:  # another server holds the key: its launches go there
        return None
    listener.listen(16)
    print(f"ready: pid {os.getpid()}, {len(sys.modules)} modules imported", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last, quitting = time.monotonic(), False
    while True:
        for item, _ in sel.select(timeout=0.2):
            if item.fileobj is listener:
                conn, _ = listener.accept()
                request, fds = _receive(conn)
                if request is None or request.get("quit"):
                    quitting |= request is not None
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                sel.register(conn, selectors.EVENT_READ, pid)
                try:
                    conn.send(json.dumps({"pid": pid}).encode())
                except OSError:
                    pass
            else:  # a launcher sends nothing after its request: readable means it went away
                sel.unregister(item.fileobj)
                # The group, and the child itself in case it has not made its own group (setsid) yet.
                for kill in (os.killpg, os.kill):
                    try:
                        kill(item.data, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is None:
                continue
            try:
                conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
            except OSError:
                pass
            if conn.fileno() in sel.get_map():
                sel.unregister(conn)
            conn.close()
            last = time.monotonic()
        if not children and (quitting or time.monotonic() - last > idle_s):
            return None


def _receive(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """The launcher's request and its standard streams; (None, ...) from another user or on a broken message."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    except OSError:
        return None, []
    if uid != os.getuid():
        return None, fds
    try:
        request = json.loads(data)
    except ValueError:
        return None, fds
    if not request.get("quit") and len(fds) != 3:
        return None, fds
    return request, fds


def become(request: dict, fds: list[int]) -> None:
    """In the forked child: take the launch's session, streams, folder and environment, then run its module as
    `python -m` runs it (exceptions and `SystemExit` go on to the interpreter's own handling)."""
    import runpy

    os.setsid()  # its own process group, as `lifetime.start` gives a fresh child
    set_parent_death_signal()  # dies with the server
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    # A fresh Python line-buffers stdout on a terminal only; the server's stdout was its log file.
    if not sys.stdout.write_through:
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # a fresh process seeds numpy's global generator from the OS; forks would share one
        numpy.random.seed()
    sys.modules.pop(request["module"], None)  # imported by the server; each launch runs it afresh as __main__
    sys.argv = [request["module"], *request["argv"]]  # argv[0] becomes the module's file, as with `-m`
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def main(argv: list[str]) -> int:
    key, module = argv
    got = serve(key, module)
    if got is None:
        return 0
    become(*got)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
