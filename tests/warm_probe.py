"""A stand-in training module for tests/test_warm.py, run by warm servers as `python -m warm_probe MODE [PATH]`.

report PATH: write what the process sees (ids, folder, argv, environment, its first stdin line) to PATH, one line to
  stdout and one to stderr, exit with $PROBE_EXIT (0 when unset);
sleep PATH: write the pid to PATH, then sleep;
signal: end by its own SIGTERM; raise: end by an uncaught exception.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy  # imported by the server (a module-level import of the module it serves)


def main() -> None:
    mode = sys.argv[1]
    if mode == "report":
        seen = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(), "sid": os.getsid(0),
                "cwd": os.getcwd(), "argv": sys.argv, "env": dict(os.environ), "name": __name__,
                "stdin": sys.stdin.readline(), "numpy": int(numpy.random.randint(2**31)),
                "stdout_tty": sys.stdout.isatty()}
        with open(sys.argv[2], "w") as f:
            json.dump(seen, f)
        print("probe stdout")
        print("probe stderr", file=sys.stderr)
        sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
    if mode == "sleep":
        with open(sys.argv[2], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    if mode == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    if mode == "raise":
        raise ValueError("probe failed on purpose")


if __name__ == "__main__":
    main()
