"""`make demo` launches through the workspace, so its runs carry the code location as their origin and the UI
lists them under their job and on the timeline (a `dagster job execute -m definitions` run has no origin).

The test launches a one-recipe folder's job the way the Makefile does (`python -m jobs.launch`), limited to its
`dataset` step to stay short, and reads the run back from the instance.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from newt.synthetic import write_reversal_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_target_launches_through_the_workspace() -> None:
    recipe = re.search(r"^demo:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert "$(PY) -m jobs.launch demo_job" in recipe and "job execute" not in recipe


@pytest.mark.slow
def test_a_launched_run_has_the_code_location_as_origin(tmp_path: Path) -> None:
    import dagster as dg

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    data = write_reversal_jsonl(tmp_path / "data.jsonl", n=8)
    (recipes / "origin.yaml").write_text(yaml.safe_dump({"base_model": "builtin:tiny-llama",
                                                         "datasets": [{"path": str(data)}]}))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home), "NEWT_RECIPES": str(recipes),
           "NEWT_STORE": str(tmp_path / "store")}
    res = subprocess.run([sys.executable, "-m", "jobs.launch", "origin_job", "-o", "origin__dataset"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    run_id = re.search(r"origin_job: run (\S+) SUCCESS", res.stderr).group(1)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.job_name == "origin_job" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None, "no code-location origin: the UI would not list the run"
        assert run.remote_job_origin.location_name == "newt"  # workspace.yaml's location_name
        assert run.remote_job_origin.repository_origin.code_location_origin.location_name == "newt"
        # the step recorded its processes (a step subprocess and its run worker) for dead-run detection
        from resources.runs import TAG_PROCESSES

        assert len(run.tags[TAG_PROCESSES].split(",")) == 2, run.tags
