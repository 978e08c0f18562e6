"""Evaluation scoring helpers and the gates: pure functions on metric tables, each able to fail."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from newt.config import RecipeError, parse_recipe
from newt.evaluate import (
    answer_scores,
    gates,
    lm_eval_metrics,
    reference_metrics,
    regression_verdicts,
    retention,
    retention_verdicts,
    threshold_verdicts,
    unflatten,
    flat_metrics,
    results_table,
)

BASE = "base_model: builtin:tiny-llama\ndatasets: [{path: data.jsonl}]\n"
RESULTS = {
    "base": {"exact_match": 0.1, "contains": 0.2, "loss": 3.0, "perplexity": 20.0},
    "merged": {"exact_match": 0.9, "contains": 0.95, "loss": 1.0, "perplexity": 2.7},
    "quantized": {"exact_match": 0.85, "contains": 0.95, "loss": 1.1, "perplexity": 3.0},
    "quantized_gguf_q8_0": {"exact_match": 0.6, "contains": 0.7, "loss": 1.5, "perplexity": 4.5},
}


def recipe(extra: str = ""):
    return parse_recipe(BASE + extra)


def failing(verdicts: list[dict]) -> set[tuple[str, str]]:
    return {(v["variant"], v["metric"]) for v in verdicts if not v["passed"]}


def test_answer_scores() -> None:
    assert answer_scores(" cba\n", "cba") == {"exact_match": True, "contains": True}
    assert answer_scores("the answer is cba.", "cba") == {"exact_match": False, "contains": True}
    assert answer_scores("answer: cba!", "cba", r"answer:\s*(\w+)")["regex_match"] is True
    assert answer_scores("cba", "cba", r"answer:\s*(\w+)")["regex_match"] is False  # no match = wrong
    assert answer_scores("xx cba yy", "cba", r"c\w+")["regex_match"] is True  # no group: the whole match


def test_thresholds_apply_to_fine_tuned_variants_in_the_metric_direction() -> None:
    verdicts = threshold_verdicts(RESULTS, {"exact_match": 0.8, "perplexity": 3.0})
    assert {v["variant"] for v in verdicts} == {"merged", "quantized", "quantized_gguf_q8_0"}  # base is not gated
    assert failing(verdicts) == {("quantized_gguf_q8_0", "exact_match"), ("quantized_gguf_q8_0", "perplexity")}
    assert failing(threshold_verdicts(RESULTS, {"contains": 0.99})) == {
        ("merged", "contains"), ("quantized", "contains"), ("quantized_gguf_q8_0", "contains")}
    # a metric the run did not produce fails rather than passing silently
    assert failing(threshold_verdicts(RESULTS, {"regex_match": 0.1})) == {
        ("merged", "regex_match"), ("quantized", "regex_match"), ("quantized_gguf_q8_0", "regex_match")}


def test_regression_against_previous() -> None:
    previous = {"merged": {"exact_match": 0.95, "loss": 0.9}, "quantized": {"exact_match": 0.86, "loss": 1.0}}
    verdicts = regression_verdicts(RESULTS, previous, {"exact_match": 0.02, "loss": 0.05})
    # merged lost 0.05 exact match (> 0.02) and 0.1 loss; quantized lost 0.01 em (ok) and 0.1 loss (too much);
    # quantized_gguf_q8_0 has no previous value: nothing to compare
    assert failing(verdicts) == {("merged", "exact_match"), ("merged", "loss"), ("quantized", "loss")}
    assert {v["variant"] for v in verdicts} == {"merged", "quantized"}
    assert regression_verdicts(RESULTS, RESULTS, {"exact_match": 0.0}) and not failing(
        regression_verdicts(RESULTS, RESULTS, {"exact_match": 0.0}))
    better = {"merged": {"exact_match": 0.5}}
    assert not failing(regression_verdicts(RESULTS, better, {"exact_match": 0.0}))  # improving never fails


def test_regression_against_base_and_a_baseline_file(tmp_path: Path) -> None:
    ref, _ = reference_metrics("base", RESULTS, None)
    assert set(ref) == {"merged", "quantized", "quantized_gguf_q8_0"} and ref["merged"] == RESULTS["base"]
    assert not failing(regression_verdicts(RESULTS, ref, {"exact_match": 0.0}))
    per_variant = tmp_path / "per_variant.json"
    per_variant.write_text(json.dumps({"merged": {"exact_match": 0.92}}))
    ref, name = reference_metrics(str(per_variant), RESULTS, None)
    assert failing(regression_verdicts(RESULTS, ref, {"exact_match": 0.01}, name)) == {("merged", "exact_match")}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"exact_match": 0.8}))
    ref, _ = reference_metrics(str(flat), RESULTS, None)
    assert failing(regression_verdicts(RESULTS, ref, {"exact_match": 0.1})) == {("quantized_gguf_q8_0", "exact_match")}
    with pytest.raises(ValueError, match="neither 'previous', 'base' nor an existing JSON file"):
        reference_metrics(str(tmp_path / "missing.json"), RESULTS, None)


def test_retention_of_quantized_against_merged() -> None:
    assert retention("exact_match", 0.85, 0.9) == pytest.approx(0.85 / 0.9)
    assert retention("perplexity", 3.0, 2.7) == pytest.approx(2.7 / 3.0)  # lower is better: merged/quantized
    assert retention("exact_match", 0.0, 0.0) == 1.0 and math.isinf(retention("loss", 0.0, 1.0))
    verdicts = retention_verdicts(RESULTS, {"exact_match": 0.9, "perplexity": 0.85})
    assert {v["variant"] for v in verdicts} == {"quantized", "quantized_gguf_q8_0"}
    assert failing(verdicts) == {("quantized_gguf_q8_0", "exact_match"), ("quantized_gguf_q8_0", "perplexity")}
    no_merged = {k: v for k, v in RESULTS.items() if k != "merged"}
    assert failing(retention_verdicts(no_merged, {"exact_match": 0.5})) == {
        ("quantized", "exact_match"), ("quantized_gguf_q8_0", "exact_match")}


def test_gates_reads_the_recipe() -> None:
    r = recipe("quantize: {outputs: [int8_weight_only, gguf_q8_0]}\n"
               "eval: {thresholds: {exact_match: 0.5}, max_drop: {exact_match: 0.01}, min_retention: {loss: 0.8}}\n")
    out = gates(RESULTS, r, previous=None)
    assert set(out) == {"threshold", "regression", "retention"}
    assert out["regression"] == []  # baseline `previous` and no previous materialization: nothing to compare
    assert failing(out["retention"]) == {("quantized_gguf_q8_0", "loss")}
    out = gates(RESULTS, r, previous={"merged": {"exact_match": 1.0}})
    assert failing(out["regression"]) == {("merged", "exact_match")}
    assert all(v == [] for v in gates(RESULTS, recipe(), None).values())  # no gates set


def test_lm_eval_metric_names() -> None:
    raw = {"reverse": {"alias": "reverse", "exact_match,none": 0.25, "exact_match_stderr,none": 0.1,
                       "acc,strict-match": 1, "samples": 4, "flag": True}}
    assert lm_eval_metrics(raw) == {"reverse/exact_match": 0.25, "reverse/acc_strict-match": 1.0,
                                    "reverse/samples": 4.0}


def test_flat_metrics_round_trip_and_table() -> None:
    results = {"merged": {"exact_match": 0.5, "rows": 8, "reverse/exact_match": 0.25}}
    flat = flat_metrics(results)
    assert flat == {"merged/exact_match": 0.5, "merged/reverse/exact_match": 0.25}
    assert unflatten({**flat, "cache": "hit", "key": "abc", "gates_passed": True}) == {
        "merged": {"exact_match": 0.5, "reverse/exact_match": 0.25}}
    assert results_table(results).splitlines()[0] == "| model | exact_match | reverse/exact_match |"


def test_eval_config_validation_reports_unknown_metrics_and_variants() -> None:
    with pytest.raises(RecipeError, match="did you mean 'exact_match'"):
        recipe("eval: {max_drop: {exact_matc: 0.1}}\n")
    with pytest.raises(RecipeError, match="<task>/<metric> for a task in eval.lm_eval_tasks"):
        recipe("eval: {thresholds: {reverse/acc: 0.1}}\n")
    recipe("eval: {thresholds: {reverse/acc: 0.1}, lm_eval_tasks: [reverse]}\n")  # fine once the task is listed
    with pytest.raises(RecipeError, match="not a model variant of this recipe"):
        recipe("eval: {models: [merged, quantized_gguf_q8_0]}\n")
    recipe("quantize: {outputs: [int8_weight_only, gguf_q8_0]}\neval: {models: [merged, quantized_gguf_q8_0]}\n")
    with pytest.raises(RecipeError, match="listed more than once"):
        recipe("quantize: {outputs: [bnb_8bit, bnb_8bit]}\n")
    with pytest.raises(RecipeError, match="add it to eval.models"):
        recipe("eval: {models: [merged], baseline: base, max_drop: {exact_match: 0.1}}\n")
    with pytest.raises(RecipeError, match="not a valid regex"):
        recipe("eval: {answer_regex: '('}\n")


def test_every_training_method_has_an_evaluator() -> None:
    from typing import get_args

    from newt.config import Recipe
    from newt.evaluate import evaluators

    methods = {"sft", *get_args(Recipe.model_fields["rl"].annotation.__args__[0])}
    assert methods <= set(evaluators())


def test_text_formats_are_not_scored_by_generation_unless_asked() -> None:
    from newt.evaluate import generates

    assert generates(recipe()) is True  # chat rows (the default type)
    text = "base_model: builtin:tiny-llama\ndatasets: [{path: d.jsonl, type: completion}]\n"
    assert generates(parse_recipe(text)) is False
    assert generates(parse_recipe(text + "eval: {generate: true}\n")) is True


def test_kto_rows_pair_desirable_with_undesirable_completions_of_the_same_prompt() -> None:
    from newt.eval.preference import pairs

    rows = [{"prompt": "a", "completion": "x", "label": True}, {"prompt": "a", "completion": "y", "label": False},
            {"prompt": "b", "completion": "z", "label": True}, {"prompt": "a", "completion": "w", "label": False}]
    items, index_pairs, chosen, rejected = pairs(rows)
    assert items == [("a", "x"), ("a", "y"), ("b", "z"), ("a", "w")]
    assert index_pairs == [(0, 1), (0, 3)] and chosen == [0, 2] and rejected == [1, 3]
    items, index_pairs, chosen, rejected = pairs([{"prompt": "p", "chosen": "c", "rejected": "r"}])
    assert items == [("p", "c"), ("p", "r")] and index_pairs == [(0, 1)] and chosen == [0] and rejected == [1]
