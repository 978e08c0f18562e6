"""Evaluation of each training method, end to end on a learnable task: the tiny model is trained a few steps and
the method's own metric moves the right way from the base model to the merged one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_rl import recipe_with, write_pairs

from newt.cache import Store
from newt.pipeline import plan, run_stage
from newt.synthetic import reversal_rows

pytestmark = pytest.mark.slow  # each test trains the tiny model

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
    base, merged = results["base"], results["merged"]
    assert set(base) == {"preference_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "pairs"}
    assert base["pairs"] == merged["pairs"] == 8
    assert base["reward_margin"] == 0.0  # the base model is DPO's reference: no margin by definition
    assert merged["reward_margin"] > 0
    assert merged["preference_accuracy"] > base["preference_accuracy"]
    assert merged["chosen_logp"] - merged["rejected_logp"] > base["chosen_logp"] - base["rejected_logp"]


def write_yes_no(path: Path, n: int = 24, paired: bool = True) -> Path:
    """A preference any model learns in a few steps: answer every prompt with yes, never with no. Paired: each
    prompt with both completions (one DPO-style row, two KTO rows); unpaired: KTO's own rows, each prompt once,
    alternately with the desirable and the undesirable completion."""
    with path.open("w") as f:
        for i, row in enumerate(reversal_rows(n, seed=2)):
            prompt = [{"role": "user", "content": row["messages"][0]["content"]}]
            if paired:
                f.write(json.dumps({"prompt": prompt, "chosen": "yes", "rejected": "no"}) + "\n")
            else:
                f.write(json.dumps({"prompt": prompt, "completion": "yes" if i % 2 else "no", "label": bool(i % 2)})
                        + "\n")
    return path


@pytest.mark.parametrize("paired", [True, False], ids=["pairs", "unpaired"])
def test_kto_raises_preference_accuracy_and_margin(tiny_recipe_file, tmp_path: Path, paired: bool) -> None:
    # pairs: both rows of a pair are held out together, so the policy ranks the two completions of each prompt;
    # unpaired: no prompt has both kinds, so KTO's own reward sign is the accuracy
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: kto\nrl_beta: 0.1\nmax_steps: 8\nlearning_rate: 0.005\n"
                         + EVAL, write_yes_no(tmp_path / "yes_no.jsonl", n=24 if paired else 48, paired=paired))
    results = evaluate(recipe, tmp_path / "store")
    base, merged = results["base"], results["merged"]
    assert base["pairs"] == merged["pairs"] == (4 if paired else 0)  # max_samples: 8 rows, 4 whole pairs
    assert base["reward_margin"] == 0.0 and merged["reward_margin"] > 0
    assert merged["preference_accuracy"] > base["preference_accuracy"]


REWARD = '''
def ascii_share(completions, completion_ids, **_):
    """Dense and learnable on the byte-level tiny model: the share of generated tokens that are ASCII bytes."""
    return [sum(i < 128 for i in ids) / max(len(ids), 1) for ids in completion_ids]
'''


def test_grpo_raises_the_recipes_own_reward(tiny_recipe_file, tmp_path: Path) -> None:
    reward = tmp_path / "rewards.py"
    reward.write_text(REWARD)
    recipe = recipe_with(tiny_recipe_file, tmp_path, f"rl: grpo\nrl_beta: 0.0\nmax_steps: 8\nlearning_rate: 0.01\n"
                         f"trl: {{num_generations: 8, max_completion_length: 8, reward_funcs: ['{reward}:ascii_share']}}\n"
                         + EVAL)
    results = evaluate(recipe, tmp_path / "store")
    base, merged = results["base"], results["merged"]
    assert set(base) == {"reward", "reward_ascii_share", "stopped", "rows"}
    assert merged["reward"] > base["reward"]
