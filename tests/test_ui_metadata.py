"""What the Dagster UI shows for a run (issue 17): the loss picture and typed tables, evaluation results as a table,
only configured gates as checks, cache hits that add no plot point, run tags, kinds with icons, a recipe link."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from assets.presentation import INLINE_MARKDOWN_CHARS, history_metadata
from definitions import build_definitions
from newt.plots import curve_rows
from resources import NewtStore

ROOT = Path(__file__).resolve().parents[1]
GATED = "eval: {max_samples: 8, max_new_tokens: 8, thresholds: {loss: 100.0}}\n"


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embedded_png(markdown: str) -> bytes:
    """The bytes of the one `data:image/png;base64,` image of a markdown value."""
    (data,) = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return base64.b64decode(data)


def test_the_loss_pictures_cover_the_whole_run_and_the_sparkline_fits_inline() -> None:
    from PIL import Image

    rng = random.Random(0)  # a long, noisy run: the hardest curve to compress
    train = [{"step": s, "loss": 3 / (1 + s / 100) + rng.random(), "learning_rate": 1e-3, "grad_norm": 1.0}
             for s in range(1, 5001)]
    evals = [{"step": s, "eval_loss": 2.5 / (1 + s / 100)} for s in range(250, 5001, 250)]
    rows = curve_rows(train, evals, limit=400)
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == 400 and steps[0] == 1 and steps[-1] == 5000  # thinned, first and last kept
    assert [r["step"] for r in rows if "eval_loss" in r] == list(range(250, 5001, 250))
    assert all(set(r) <= {"step", "loss", "eval_loss", "learning_rate"} for r in rows)

    meta = history_metadata(train[-20:], "/store/trained/k", rows)
    curve = meta["loss_curve"].value
    assert len(curve) < INLINE_MARKDOWN_CHARS  # the UI shows it in the metadata table, not behind a dialog
    first, last = train[0]["loss"], train[-1]["loss"]
    assert f"train loss {first:.4g} → {last:.4g} · steps 1–5000\n\neval loss: orange" in curve
    spark = Image.open(io.BytesIO(embedded_png(curve)))
    assert spark.width >= 120 and len(set(spark.getdata())) >= 3  # background, train and eval colours
    chart = Image.open(io.BytesIO(embedded_png(meta["loss_chart"].value)))
    assert chart.size == (640, 320)
    assert [r.data["step"] for r in meta["loss_history"].records] == list(range(4981, 5001))
    assert meta["loss_curve_png"].value == "/store/trained/k/loss.png"
    assert set(history_metadata([], "/x")) == {"loss_history"}  # nothing logged: no picture


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
        assert len(curve) < INLINE_MARKDOWN_CHARS and "steps 1–3\n" in curve  # inline, over the whole run
        assert embedded_png(curve)[:8] == PNG_MAGIC
        chart = embedded_png(trained["loss_chart"].value)
        png = Path(trained["loss_curve_png"].value)
        assert png.parent == Path(trained["artifact"].value) and png.read_bytes() == chart  # the artifact's picture
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
