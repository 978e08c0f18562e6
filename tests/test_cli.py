"""The `newt` command line: run (in process, with progress and an honest exit code), plan, preview, validate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import tiny_run

from newt.cli import diff_inputs, main, render_row

ROOT = Path(__file__).resolve().parents[1]
NEWT = Path(sys.executable).with_name("newt")


@pytest.fixture
def run(monkeypatch):
    result = tiny_run()
    assert result.rc == 0, f"newt run failed:\n{result.stderr[-4000:]}"
    for k, v in result.env().items():
        monkeypatch.setenv(k, v)
    return result


def variant(run, tmp_path: Path, extra: str) -> Path:
    """The session's recipe under the same name (tiny) with `extra`'s top-level keys replacing its own: same
    recipe, edited (a recipe may not give a key twice)."""
    import yaml

    path = tmp_path / run.recipe.name
    recipe = yaml.safe_load(run.recipe.read_text()) | yaml.safe_load(extra)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_newt_run_materializes_an_axolotl_style_file_with_progress(run) -> None:
    err = run.stderr
    for stage in ("dataset", "prepared", "trained", "merged", "quantized", "evaluation"):
        assert f"✓ {stage}  miss" in err, stage
        assert any(p.is_dir() for p in (run.store / stage).iterdir()), stage
    assert "trained: step 3/3 loss=" in err  # the child's step lines, via Pipes, as progress
    assert "✓ check eval_thresholds: passed" in err
    assert "newt run tiny: ok in" in err


@pytest.mark.slow
def test_plan_says_hit_then_names_the_inputs_that_changed(run, tmp_path: Path, capsys) -> None:
    assert main(["plan", str(run.recipe)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [
        [s, "hit"] for s in ("dataset", "prepared", "trained", "merged", "quantized", "evaluation")
    ]

    assert main(["plan", str(variant(run, tmp_path, "lora_r: 8\n"))]) == 0  # the file says lora_r: 4 earlier
    out = capsys.readouterr().out
    trained = out[out.index("\ntrained") : out.index("\nmerged")]
    assert "miss" in trained and "fields.lora_r: 4 → 8" in trained
    merged = out[out.index("\nmerged") : out.index("\nquantized")]
    assert "upstream.trained: " in merged and "lora_r" not in merged  # only trained has lora_r in its key
    assert out.split("\n")[1].split()[:2] == ["dataset", "hit"]


@pytest.mark.slow
def test_run_exits_1_when_a_gate_fails_even_on_cache_hits(run, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("DAGSTER_HOME")  # an ephemeral instance: the shared run history stays green for the UI
    strict = variant(
        run, tmp_path, "eval: {max_samples: 8, max_new_tokens: 8, thresholds: {exact_match: 1.01}}\n"
    )
    assert main(["run", str(strict), "--stages", "evaluation"]) == 1
    err = capsys.readouterr().err
    assert "✓ evaluation  hit" in err or "✗ evaluation" in err
    assert "✗ check eval_thresholds: FAILED" in err
    assert "FAILED" in err and "failed check(s): eval_thresholds" in err


@pytest.mark.slow
def test_a_run_of_hits_records_what_a_dagster_run_of_hits_records(run, tmp_path: Path, monkeypatch, capsys) -> None:
    import dagster as dg

    from jobs.cli import Progress, execute
    from newt.config import load_recipe
    from newt.pipeline import nodes, plan

    home = tmp_path / "home"  # a history of its own: what this run records, and nothing else
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["run", str(run.recipe)]) == 0
    err = capsys.readouterr().err
    stages = ("dataset", "prepared", "trained", "merged", "quantized", "evaluation")
    done = [line.split()[:3] for line in err.splitlines() if line.startswith("✓ ")]
    assert done == [["✓", s, "hit"] for s in stages]
    assert "✓ check eval_thresholds: passed" in err and "recorded without a run" in err

    recipe = load_recipe(run.recipe)
    keys = plan(recipe)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []  # no run was created for six hits
        fast = {}
        for stage in nodes(recipe):
            [record] = instance.fetch_materializations(dg.AssetKey(["tiny", stage]), limit=10).records
            fast[stage] = record.asset_materialization
            assert record.asset_materialization.metadata["cache"].value == "hit"
            assert record.event_log_entry.tags["dagster/data_version"] == keys[stage].key
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(["tiny", "evaluation"]), "eval_thresholds"), limit=10)
        assert check.evaluation.passed
        # The same stages materialized by the recipe's Dagster job: every hit records the same metadata.
        result = execute(recipe, run.recipe, list(stages), instance, Progress(recipe))
        assert result.success
        for stage in stages:
            records = instance.fetch_materializations(dg.AssetKey(["tiny", stage]), limit=10).records
            assert records[0].run_id == result.run_id
            assert records[0].asset_materialization.metadata == fast[stage].metadata, stage
            assert records[0].event_log_entry.tags["dagster/data_version"] == keys[stage].key


@pytest.mark.slow
def test_preview_shows_trained_tokens(run, capsys) -> None:
    assert main(["preview", str(run.recipe), "-n", "2", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "── row 0:" in out and "── row 1:" in out and "── row 2:" not in out
    # the reversal task: only the assistant's answer and its end-of-turn marker are trained
    assert "<|im_start|>assistant\n⟦" in out and "<|im_end|>⟧" in out
    assert "⟦<|im_start|>user" not in out


def test_render_row_colors_trained_and_masked_spans() -> None:
    class Tok:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    ids, labels = [0, 1, 2, 3], [-100, -100, 2, 3]
    assert render_row(ids, labels, Tok(), color=False) == "ab⟦cd⟧"
    assert render_row(ids, labels, Tok(), color=True) == "\x1b[2mab\x1b[0m\x1b[1m\x1b[32mcd\x1b[0m"


def test_diff_inputs_names_changed_key_paths() -> None:
    old = {"fields": {"lora_r": 8, "datasets": [{"path": "a"}]}, "external": {"sources": [{"version": "x"}]}}
    new = {"fields": {"lora_r": 16, "datasets": [{"path": "a"}]}, "external": {"sources": [{"version": "y"}]}}
    assert diff_inputs(old, new) == [("external.sources[0].version", "x", "y"), ("fields.lora_r", 8, 16)]
    assert diff_inputs({"a": 1}, {"b": 1}) == [("a", 1, "<absent>"), ("b", "<absent>", 1)]


def test_validate_is_a_console_script_and_reports_every_problem(tmp_path: Path) -> None:
    from newt.synthetic import write_reversal_jsonl

    write_reversal_jsonl(tmp_path / "data" / "reversal.jsonl", n=4)  # validate reads the recipe's data file
    ok = subprocess.run(
        [str(NEWT), "validate", str(ROOT / "recipes/examples/axolotl_style.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "note: sdp_attention: True read as attn_implementation: 'sdpa'" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: m\ndatasets: [{path: d}]\nlora_rr: 3\nlora_model_dir: ./out\n")
    res = subprocess.run(
        [str(NEWT), "validate", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 2
    assert "3 problems" in res.stderr and "did you mean 'lora_r'" in res.stderr  # + the allowed keys, once
    assert "Axolotl key 'lora_model_dir' is not supported by newt" in res.stderr


def test_the_core_and_the_cli_module_never_import_dagster() -> None:
    code = (
        "import sys, newt.cli, newt.config, newt.pipeline, newt.axolotl, newt.docgen; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'dagster']; assert not bad, bad"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr
