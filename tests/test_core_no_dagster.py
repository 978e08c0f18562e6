"""The core (`newt/`) never imports dagster: every `newt.*` module imports with dagster made unimportable.

A folder holding a `dagster` package that raises ImportError goes first on the child's path, so any
`import dagster` (or `from dagster ...`) anywhere under newt fails; `dagster_pipes`, the training children's
separate package, stays importable. The module list is walked from the package, never written down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WALK = r"""
import importlib, pkgutil, sys
import newt

names = ["newt"] + [m.name for m in pkgutil.walk_packages(newt.__path__, "newt.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = str(exc)
loaded = [m for m in sys.modules if m.split(".")[0] == "dagster"]
print(len(names), "modules")
assert not failed, failed
assert not loaded, loaded
"""


def test_every_newt_module_imports_without_dagster(tmp_path: Path) -> None:
    blocker = tmp_path / "dagster"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('dagster is not importable here: newt/ must not need it')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", WALK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    count = int(res.stdout.split()[0])
    assert count == len(list((ROOT / "newt").rglob("*.py"))), res.stdout  # every file was imported


def test_the_blocker_does_block(tmp_path: Path) -> None:
    """The check above can fail: the same set-up refuses the Dagster layer, which does import dagster."""
    blocker = tmp_path / "dagster"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", "import jobs.cli"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode != 0 and "ImportError: blocked" in res.stderr
