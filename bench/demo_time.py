"""How long `make demo` takes after installation, cold (empty store) and warm (every stage a cache hit).

Runs the same commands as the Makefile's demo target against a fresh store and Dagster home in a temp folder, so
the repo's own .newt/ and .dagster_home/ are untouched. Goal (issue 2): cold ≤ 300 s on 2 CPU cores.

    .venv/bin/python bench/demo_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_demo(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "newt.synthetic", "data/reversal.jsonl"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # as the Makefile: launched through workspace.yaml (a daemon for the duration), so the UI lists the run
    subprocess.run([sys.executable, "-m", "jobs.launch", "demo_job"], cwd=ROOT,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="newt-demo-bench-") as tmp:
        env = dict(os.environ, DAGSTER_HOME=f"{tmp}/dagster_home", NEWT_STORE=f"{tmp}/store",
                   TOKENIZERS_PARALLELISM="false")
        env.setdefault("NEWT_CACHE_DIR", str(ROOT / ".newt" / "cache"))
        Path(env["DAGSTER_HOME"]).mkdir()
        (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        cold = run_demo(env)
        warm = run_demo(env)
    print(f"demo cold: {cold:.1f} s ({cold / 300:.2f} x the 300 s budget)")
    print(f"demo warm (all cache hits): {warm:.1f} s = {cold / warm:.1f} x faster than cold")


if __name__ == "__main__":
    main()
