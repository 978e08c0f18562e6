"""How the command line shows a failure: newt's own message with its fix, in one place; the traceback only with
`--debug`. And how it tells Ctrl-C from SIGTERM when a library (Dagster) has replaced the signal handlers.

newt's errors are written to be read: they name the file, row or key, what was expected and the fix, and they
are raised `from` the library error that caused them. So the message to show is the outermost error of the chain
(the one newt raised last), never the innermost one (a pyarrow or botocore error without file or fix).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from typing import TextIO


class Interrupted(Exception):
    """The run was stopped by a signal; `code` is the shell's exit status for it (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.code = 128 + signum


def is_newt_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "newt"


def message(exc: BaseException) -> str:
    """One readable message: newt's own text as is; another library's error (a bug of newt's checks, or
    something newt does not know yet) with its type, so that `'input_ids'` says it was a KeyError."""
    text = str(exc).strip()
    if is_newt_error(exc) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def show(exc: BaseException, stream: TextIO, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=stream)
        return
    print(f"error: {message(exc)}", file=stream)
    print("(newt --debug ... shows the traceback)", file=stream)


# --- which signal stopped us ------------------------------------------------------------------------------------

_received: list[int] = []
_pipe: tuple[int, int] | None = None


@contextlib.contextmanager
def watching_signals() -> Iterator[None]:
    """Record every signal this process receives, whatever Python handler is installed at the time: the kernel
    writes each signal number to a wakeup fd. Dagster maps SIGTERM onto its SIGINT handler while a run executes,
    so a handler alone cannot tell the two apart. SIGTERM outside a run raises KeyboardInterrupt like Ctrl-C
    (the caller then asks `interrupted_by`). Everything is restored on exit (tests call the CLI in-process)."""
    global _pipe
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _pipe is None:
        _pipe = os.pipe()
        for fd in _pipe:
            os.set_blocking(fd, False)
    _received.clear()
    interrupted_by()  # drop what an earlier call left in the pipe
    _received.clear()
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    old_fd = signal.set_wakeup_fd(_pipe[1], warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Started with `&` from a script, SIGINT arrives ignored: a Ctrl-C (or `kill -INT`) must still stop a run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def interrupted_by() -> int | None:
    """SIGTERM or SIGINT if one was received inside `watching_signals` (SIGTERM wins), else None."""
    if _pipe is not None:
        try:
            while chunk := os.read(_pipe[0], 512):
                _received.extend(chunk)
        except BlockingIOError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig in _received:
            return int(sig)
    return None
