"""Evaluation of each training method, end to end on a learnable task: the tiny model is trained a few steps and
the method's own metric moves the right way from the base model to the merged one."""

from __future__ import annotations

from pathlib import Path

from test_train_rl import recipe_with, write_pairs

from newt.cache import Store
from newt.pipeline import plan, run_stage

STAGES = ("dataset", "prepared", "trained", "merged", "evaluation")
EVAL = "eval: {models: [base, merged], max_samples: 8, max_new_tokens: 8}\n"


def evaluate(recipe, root: Path) -> dict[str, dict[str, float]]:
    store, keys = Store(str(root)), plan(recipe)
    for stage in STAGES:
        outcome = run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    return outcome.metadata["results"]


def test_dpo_raises_preference_accuracy_and_margin(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: dpo\nrl_beta: 0.1\nmax_steps: 8\nlearning_rate: 0.005\n"
                         + EVAL, write_pairs(tmp_path / "pairs.jsonl", n=48))
    results = evaluate(recipe, tmp_path / "store")
    print(results)
    base, merged = results["base"], results["merged"]
    assert set(base) == {"preference_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "pairs"}
    assert base["pairs"] == merged["pairs"] == 8
    assert base["reward_margin"] == 0.0  # the base model is DPO's reference: no margin by definition
    assert merged["reward_margin"] > 0
    assert merged["preference_accuracy"] > base["preference_accuracy"]
    assert merged["chosen_logp"] - merged["rejected_logp"] > base["chosen_logp"] - base["rejected_logp"]
