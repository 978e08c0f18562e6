"""The Dagster layer: the asset graph of a recipe, and a whole tiny recipe materialized twice in process."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from resources import NewtStore

ROOT = Path(__file__).resolve().parents[1]


def graph_snapshot(defs: dg.Definitions) -> dict[str, tuple]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = (node.group_name, sorted(p.to_user_string() for p in node.parent_keys),
                                     sorted(node.pools or ()) or None)
    return out


def test_asset_graph_snapshot(tiny_recipe_file, tmp_path: Path) -> None:
    recipes = tiny_recipe_file().parent
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    assert graph_snapshot(defs) == {
        "tiny/dataset": ("tiny", ["tiny/source_0"], None),
        "tiny/evaluation": ("tiny", ["tiny/merged", "tiny/prepared", "tiny/quantized"], ["gpu"]),
        "tiny/merged": ("tiny", ["tiny/trained"], ["gpu"]),
        "tiny/prepared": ("tiny", ["tiny/dataset"], None),
        "tiny/quantized": ("tiny", ["tiny/merged"], ["gpu"]),
        "tiny/source_0": ("tiny", [], None),
        "tiny/trained": ("tiny", ["tiny/prepared"], ["gpu"]),
    }
    assert [j.name for j in defs.jobs] == ["tiny_job"]
    # the tiny recipe sets no gates: an unconfigured gate is no check at all (never a green "Passed")
    assert defs.resolve_asset_graph().asset_check_keys == set()


def test_each_quantize_output_is_its_own_asset(tiny_recipe_file, tmp_path: Path) -> None:
    recipes = tiny_recipe_file(extra="quantize: {outputs: [int8_weight_only, gguf_q8_0, bnb_4bit]}\n"
                                     "eval: {models: [merged, quantized_gguf_q8_0]}\n").parent
    snap = graph_snapshot(build_definitions(recipes, NewtStore(root=str(tmp_path / "store"))))
    assert {k: v for k, v in snap.items() if "quantized" in k or "evaluation" in k} == {
        "tiny/quantized": ("tiny", ["tiny/merged"], ["gpu"]),
        "tiny/quantized_gguf_q8_0": ("tiny", ["tiny/merged"], ["gpu"]),
        "tiny/quantized_bnb_4bit": ("tiny", ["tiny/merged"], ["gpu"]),
        # evaluation waits only for the variants it evaluates
        "tiny/evaluation": ("tiny", ["tiny/merged", "tiny/prepared", "tiny/quantized_gguf_q8_0"], ["gpu"]),
    }


def test_shipped_definitions_load() -> None:
    import definitions

    keys = {k.to_user_string() for k in definitions.defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"demo/dataset", "demo/prepared", "demo/trained", "demo/merged", "demo/quantized",
            "demo/evaluation"} <= keys


def test_code_version_follows_the_recipe(tiny_recipe_file, tmp_path: Path) -> None:
    def versions(extra: str) -> dict[str, str]:
        defs = build_definitions(tiny_recipe_file(extra=extra).parent, NewtStore(root=str(tmp_path)))
        graph = defs.resolve_asset_graph()
        return {k.path[-1]: graph.get(k).code_version for k in graph.get_all_asset_keys()}

    a, b = versions(""), versions("merge: {dtype: bfloat16}\n")
    assert {s for s in a if a[s] != b[s]} == {"merged"}  # only the stage whose fields changed is Unsynced


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(defs.assets), resources=defs.resources, instance=instance, raise_on_error=False)


@pytest.mark.slow
def test_materialize_twice_second_run_is_all_cache_hits(tiny_recipe_file, tmp_path: Path) -> None:
    recipes = tiny_recipe_file(extra="eval: {max_samples: 8, max_new_tokens: 8, thresholds: {exact_match: 0.0}}\n"
                               ).parent
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    instance = dg.DagsterInstance.ephemeral()

    first = materialize(defs, instance)
    assert first.success
    meta1 = {e.materialization.asset_key.path[-1]: e.materialization for e in first.get_asset_materialization_events()}
    assert set(meta1) == {"dataset", "prepared", "trained", "merged", "quantized", "evaluation"}
    assert {m.metadata["cache"].value for m in meta1.values()} == {"miss"}
    trained = meta1["trained"].metadata
    # metrics came back from the accelerate-launched child
    assert trained["world_size"].value == 1 and trained["global_step"].value == 3
    assert isinstance(trained["final_loss"].value, float)
    logs = [r.user_message for r in instance.all_logs(first.run_id)]
    assert any("external process successfully opened dagster pipes" in m for m in logs)
    assert any(m.startswith("step=1 loss=") for m in logs), "the child's step metrics stream to the run log"
    assert meta1["prepared"].metadata["rows_validation"].value == 8
    assert "merged/exact_match" in meta1["evaluation"].metadata
    assert all(check.passed for check in first.get_asset_check_evaluations())

    second = materialize(defs, instance)
    assert second.success
    meta2 = {e.materialization.asset_key.path[-1]: e.materialization for e in second.get_asset_materialization_events()}
    assert {m.metadata["cache"].value for m in meta2.values()} == {"hit"}
    for stage, m in meta1.items():
        assert meta2[stage].tags["dagster/data_version"] == m.tags["dagster/data_version"] == m.metadata["key"].value
    # a hit reports the same numbers as text, so metric plots get no duplicate point
    assert meta2["trained"].metadata["final_loss"].value == str(trained["final_loss"].value)

    # a failing gate fails the blocking check on a cache hit: no re-evaluation needed to tighten a threshold
    strict = build_definitions(tiny_recipe_file(extra="eval: {max_samples: 8, max_new_tokens: 8, "
                                                      "thresholds: {exact_match: 1.01}}\n").parent,
                               NewtStore(root=str(tmp_path / "store")))
    third = materialize(strict, instance)
    assert not third.success
    checks = {c.check_name: c.passed for c in third.get_asset_check_evaluations()}
    assert checks == {"eval_thresholds": False}
    ev = {e.materialization.asset_key.path[-1]: e.materialization for e in third.get_asset_materialization_events()}
    assert ev["evaluation"].metadata["cache"].value == "hit"
