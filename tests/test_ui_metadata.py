"""What the Dagster UI shows for a run (issue 17): the loss picture and typed tables, evaluation results as a table,
only configured gates as checks, cache hits that add no plot point, run tags, kinds with icons, a recipe link."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from resources import NewtStore

ROOT = Path(__file__).resolve().parents[1]
GATED = "eval: {max_samples: 8, max_new_tokens: 8, thresholds: {loss: 100.0}}\n"


def materializations(result) -> dict[str, dg.AssetMaterialization]:
    return {e.materialization.asset_key.path[-1]: e.materialization for e in result.get_asset_materialization_events()}


def test_assets_have_icon_kinds_a_recipe_link_and_only_configured_checks(tiny_recipe_file, tmp_path: Path) -> None:
    recipe_file = tiny_recipe_file(extra=GATED)
    defs = build_definitions(recipe_file.parent, NewtStore(root=str(tmp_path / "store")))
    graph = defs.resolve_asset_graph()
    specs = {k.path[-1]: graph.get(k) for k in graph.get_all_asset_keys()}
    assert specs["trained"].kinds == {"newt", "pytorch", "huggingface"}
    assert specs["prepared"].kinds == {"newt", "huggingface"}
    uri = recipe_file.resolve().as_uri()
    for name, node in specs.items():
        assert f"(recipe [tiny.yaml]({uri}))" in node.description, name
    refs = specs["trained"].metadata["dagster/code_references"].code_references
    assert [(r.file_path, r.label) for r in refs] == [(str(recipe_file.resolve()), "recipe")]
    assert {c.to_user_string() for c in graph.asset_check_keys} == {"tiny/evaluation:eval_thresholds"}


@pytest.mark.slow
def test_a_run_reads_well_in_the_ui(tiny_recipe_file, tmp_path: Path) -> None:
    recipe_file = tiny_recipe_file(extra=GATED)
    defs = build_definitions(recipe_file.parent, NewtStore(root=str(tmp_path / "store")))
    job = defs.resolve_job_def("tiny_job")
    with dg.instance_for_test() as instance:
        first = job.execute_in_process(instance=instance, raise_on_error=False)
        assert first.success
        # run tags: recipe, the recipe file's hash, the code location's commit
        tags = instance.get_run_by_id(first.run_id).tags
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert tags["newt/recipe"] == "tiny"
        assert tags["newt/recipe_sha256"] == hashlib.sha256(recipe_file.read_bytes()).hexdigest()[:16]
        assert tags["newt/git_commit"].removesuffix("-dirty") == head.strip()
        # only the configured gate is a check, and it passed with its verdict
        evaluations = first.get_asset_check_evaluations()
        assert [(c.check_name, c.passed) for c in evaluations] == [("eval_thresholds", True)]
        assert "merged loss = " in evaluations[0].metadata["verdicts"].value

        meta = materializations(first)
        trained = meta["trained"].metadata
        curve = trained["loss_curve"].value
        assert curve.startswith("```\n● train loss\n") and curve.endswith("\n```")
        assert curve.count("●") == 1 + 3 and "step 1" in curve  # the legend's and one per logged step
        png = Path(trained["loss_curve_png"].value)
        assert png.parent == Path(trained["artifact"].value) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        history = trained["loss_history"]
        assert isinstance(history, dg.TableMetadataValue)
        types = {c.name: c.type for c in history.schema.columns}
        assert (types["step"], types["loss"], types["learning_rate"]) == ("int", "float", "float")
        assert [r.data["step"] for r in history.records] == [1, 2, 3]
        assert isinstance(trained["final_loss"].value, float)  # a miss: numbers, which the UI plots

        evaluation = meta["evaluation"].metadata
        table = evaluation["results_table"]
        assert isinstance(table, dg.TableMetadataValue)
        assert [r.data["model"] for r in table.records] == ["base", "merged", "quantized"]
        assert {c.name: c.type for c in table.schema.columns}["loss"] == "float"
        merged = next(r.data for r in table.records if r.data["model"] == "merged")
        assert merged["loss"] == evaluation["merged/loss"].value and merged["rows"] == 8
        assert "| merged |" in evaluation["results"].value

        # a cache hit: recorded, says so, and its numbers are text (no new point on any plot)
        second = job.execute_in_process(instance=instance, raise_on_error=False)
        assert second.success
        hit = materializations(second)
        assert {m.metadata["cache"].value for m in hit.values()} == {"hit"}
        assert hit["evaluation"].metadata["merged/loss"] == dg.MetadataValue.text(str(evaluation["merged/loss"].value))
        assert hit["trained"].metadata["final_loss"] == dg.MetadataValue.text(str(trained["final_loss"].value))
        numeric = (dg.FloatMetadataValue, dg.IntMetadataValue)
        assert not [n for m in hit.values() for n, v in m.metadata.items() if isinstance(v, numeric)]
        assert [c.passed for c in second.get_asset_check_evaluations()] == [True]
