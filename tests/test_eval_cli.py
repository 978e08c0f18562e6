"""End to end: a recipe with two quantize outputs materialized once in process, then the gates judged again on
cache hits — in process and through `dagster asset materialize`, whose exit code is what CI enforces — and the
lineage of a quantized artifact followed back to its data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from conftest import TINY_RECIPE
from definitions import build_definitions
from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan
from resources import NewtStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

EXTRA = """\
quantize: {outputs: [int8_weight_only, bnb_8bit]}
eval:
  max_samples: 8
  max_new_tokens: 8
  models: [merged, quantized, quantized_bnb_8bit]   # base: tests/test_dagster.py (default models)
  answer_regex: '(\\S+)'
  thresholds: {exact_match: 0.0, loss: 100.0}
  max_drop: {loss: 0.0}
  min_retention: {loss: 0.5}
"""
EVAL_KEY = dg.AssetKey(["tiny", "evaluation"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Recipes dir, store, DAGSTER_HOME and the first (passing) in-process materialization of everything."""
    from newt.synthetic import write_reversal_jsonl

    tmp = tmp_path_factory.mktemp("evalcli")
    data = write_reversal_jsonl(tmp / "data" / "reversal.jsonl", n=48)
    (tmp / "recipes").mkdir()
    (tmp / "recipes" / "tiny.yaml").write_text(TINY_RECIPE.format(data=data).replace("eval:\n  max_samples: 8\n  "
                                                                                     "max_new_tokens: 8\n", "") + EXTRA)
    (tmp / "home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp / "home" / "dagster.yaml")
    store = tmp / "store"
    defs = build_definitions(tmp / "recipes", NewtStore(root=str(store)))
    instance = dg.DagsterInstance.from_config(str(tmp / "home"))
    first = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance, raise_on_error=False)
    return {"tmp": tmp, "store": store, "defs": defs, "instance": instance, "first": first}


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.materialization.asset_key.path[-1]: e.materialization for e in result.get_asset_materialization_events()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def evaluate_again(world) -> dg.ExecuteInProcessResult:
    evaluation = [a for a in world["defs"].assets if isinstance(a, dg.AssetsDefinition) and EVAL_KEY in a.keys]
    return dg.materialize(evaluation, resources=world["defs"].resources, instance=world["instance"],
                          raise_on_error=False)


def fake_previous(world, metadata: dict) -> None:
    world["instance"].report_runless_asset_event(dg.AssetMaterialization(EVAL_KEY, metadata=metadata))


def test_every_output_and_variant_is_built_evaluated_and_gated(world) -> None:
    first = world["first"]
    assert first.success
    meta = materializations(first)
    assert set(meta) == {"dataset", "prepared", "trained", "merged", "quantized", "quantized_bnb_8bit", "evaluation"}
    assert meta["quantized"].metadata["method"].value == "int8_weight_only"
    assert meta["quantized_bnb_8bit"].metadata["method"].value == "bnb_8bit"
    assert meta["quantized"].metadata["key"].value != meta["quantized_bnb_8bit"].metadata["key"].value
    ev = meta["evaluation"].metadata
    for variant in ("merged", "quantized", "quantized_bnb_8bit"):
        for metric in ("exact_match", "contains", "regex_match", "loss", "perplexity"):
            assert isinstance(ev[f"{variant}/{metric}"].value, float), (variant, metric)  # plotted by the UI
    assert "| quantized_bnb_8bit |" in ev["results"].value
    assert ev["gates_passed"].value is True
    # no earlier materialization: the regression gate has nothing to compare with and passes
    assert checks(first) == {"eval_thresholds": True, "eval_regression": True, "eval_retention": True}
    merged = Path(meta["merged"].metadata["artifact"].value) / "model"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in merged.iterdir()}


def test_regression_gate_reads_the_previous_passing_materialization(world) -> None:
    loss = materializations(world["first"])["evaluation"].metadata["merged/loss"].value
    # an earlier, better run (lower loss) becomes the bar
    fake_previous(world, {"merged/loss": loss - 0.5, "gates_passed": True})
    second = evaluate_again(world)
    assert not second.success
    assert checks(second) == {"eval_thresholds": True, "eval_regression": False, "eval_retention": True}
    assert materializations(second)["evaluation"].metadata["cache"].value == "hit"  # judged without re-evaluating
    # a failed run was recorded too (gates_passed false) but never lowers the bar; neither does a bad report
    fake_previous(world, {"merged/loss": loss + 5, "gates_passed": False})
    assert checks(evaluate_again(world))["eval_regression"] is False


def cli(world, select: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEWT_RECIPES": str(world["tmp"] / "recipes"), "NEWT_STORE": str(world["store"]),
           "DAGSTER_HOME": str(world["tmp"] / "home")}
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions",
                           "--select", select], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_exit_code_follows_the_gates(world) -> None:
    test_regression_gate_reads_the_previous_passing_materialization(world)  # the bar is above this model
    failed = cli(world, "tiny/evaluation")
    assert failed.returncode != 0, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "eval_regression" in failed.stdout + failed.stderr
    # the same model, once a passing run with the same metrics is the latest: exit 0, all cache hits
    current = materializations(world["first"])["evaluation"].metadata
    fake_previous(world, {k: v.value for k, v in current.items() if "/" in k} | {"gates_passed": True})
    passed = cli(world, "tiny/evaluation")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]


def test_lineage_of_a_quantized_output_reaches_the_data(world, capsys, monkeypatch) -> None:
    from newt.lineage import main, origins, trace

    recipe = load_recipe(world["tmp"] / "recipes" / "tiny.yaml")
    keys = plan(recipe)
    tree = trace(Store(str(world["store"])), "quantized_bnb_8bit", keys["quantized_bnb_8bit"].key)
    assert [t.node for t in tree.walk()] == ["quantized_bnb_8bit", "merged", "trained", "prepared", "dataset"]
    assert all(t.status == "hit" and t.key_verified for t in tree.walk())
    assert tree.fields["quantize"] == {"method": "bnb_8bit"}
    found = origins(tree)
    assert found["recipe"] == "tiny" and found["base_model"] == "builtin:tiny-llama"
    assert found["data"][0]["kind"] == "sha256" and len(found["data"][0]["version"]) == 64
    assert found["tokenizer_files"] and found["base_model_files"] and found["missing"] == []
    assert set(found["code_versions"]) == {"quantized_bnb_8bit", "merged", "trained", "prepared", "dataset"}
    monkeypatch.setenv("NEWT_STORE", str(world["store"]))
    assert main([str(world["tmp"] / "recipes" / "tiny.yaml"), "quantized_bnb_8bit"]) == 0
    printed = capsys.readouterr().out
    assert f"quantized/{keys['quantized_bnb_8bit'].key}" in printed and "method: bnb_8bit" in printed
