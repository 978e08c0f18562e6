"""Reward modelling (`rl: reward`): TRL's RewardTrainer child, the merged sequence classifier, and the evaluation's
held-out pairwise accuracy that the gates read."""

from __future__ import annotations

import json
from pathlib import Path

from test_train import inprocess_launcher

from newt.cache import Store
from newt.config import load_recipe, parse_recipe
from newt.pipeline import plan, run_stage
from newt.synthetic import reversal_rows


def write_case_pairs(path: Path, n: int = 240) -> Path:
    """A learnable pair task that a fresh (random) score head cannot solve by chance: the prompt asks for `upper`
    or `lower` case (half each), chosen answers in that case, rejected in the other. A fixed random head prefers
    one case, which is right for only half the prompts; a trained one must read the instruction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in reversal_rows(n, seed=3):
            word = row["messages"][0]["content"]
            upper = len(word) % 2 == 0
            low, high = word[::-1], word[::-1].upper()
            f.write(json.dumps({"prompt": [{"role": "user", "content": ("upper " if upper else "lower ") + word}],
                                "chosen": high if upper else low, "rejected": low if upper else high}) + "\n")
    return path


RECIPE = """\
base_model: builtin:tiny-llama
datasets: [{{path: {data}}}]
rl: reward
sequence_len: 64
val_set_size: 40
adapter: lora
lora_r: 8
lora_alpha: 16
lora_modules_to_save: [embed_tokens, lm_head]   # lm_head is dropped for a classifier; score is added
micro_batch_size: 16
max_steps: 40
learning_rate: 0.003
warmup_steps: 5
logging_steps: 10
eval:
  max_samples: 40                               # models: base, merged, quantized (int8), the default
  thresholds: {{pairwise_accuracy: 0.9}}
"""


def test_reward_model_learns_the_pairs_and_the_gate_reads_its_accuracy(tmp_path: Path) -> None:
    from newt.evaluate import gates
    from newt.models import load_model

    recipe_file = tmp_path / "rm.yaml"
    recipe_file.write_text(RECIPE.format(data=write_case_pairs(tmp_path / "pairs.jsonl")))
    recipe = load_recipe(recipe_file)
    store, keys = Store(str(tmp_path / "store")), plan(recipe)
    outcomes = {s: run_stage(recipe, s, store, keys=keys, launcher=inprocess_launcher, log=lambda m: None)
                for s in ("dataset", "prepared", "trained", "merged", "quantized", "evaluation")}
    assert outcomes["prepared"].metadata["columns"] == ["prompt", "chosen", "rejected"]
    trained = outcomes["trained"].metadata
    assert trained["method"] == "reward" and trained["global_step"] == 40 and trained["train_rows"] == 200
    adapter = json.loads((store.local_path("trained", keys["trained"].key) / "adapter" / "adapter_config.json")
                         .read_text())
    # PEFT adds its own SEQ_CLS head names (classifier, score) to the recipe's; lm_head is gone
    assert adapter["task_type"] == "SEQ_CLS" and {"embed_tokens", "score"} <= set(adapter["modules_to_save"])
    assert "lm_head" not in adapter["modules_to_save"]

    merged = store.local_path("merged", keys["merged"].key) / "model"
    assert json.loads((merged / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    model = load_model(str(merged))
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id == 257

    results = outcomes["evaluation"].metadata["results"]
    print(f"reward model pairwise accuracy: base {results['base']['pairwise_accuracy']}, "
          f"merged {results['merged']['pairwise_accuracy']}, quantized {results['quantized']['pairwise_accuracy']}")
    assert results["merged"]["rows"] == 40
    assert results["merged"]["pairwise_accuracy"] > 0.9
    assert outcomes["quantized"].metadata["architecture"] == "LlamaForSequenceClassification"
    assert results["quantized"]["pairwise_accuracy"] > 0.9  # the int8 reward model ranks the pairs as well
    assert results["base"]["pairwise_accuracy"] < 0.75, "the untrained head must not solve the task by chance"
    assert results["merged"]["reward_margin"] > results["base"]["reward_margin"] + 1.0
    verdicts = gates(results, recipe)["threshold"]
    assert [(v["variant"], v["metric"], v["passed"]) for v in verdicts] == [
        ("merged", "pairwise_accuracy", True), ("quantized", "pairwise_accuracy", True)]
    failing = parse_recipe(recipe_file.read_text().replace("pairwise_accuracy: 0.9", "pairwise_accuracy: 1.01"))
    assert not gates(results, failing)["threshold"][0]["passed"]


def test_axolotl_reward_model_true_is_rl_reward() -> None:
    recipe = parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\nreward_model: true\n")
    assert recipe.rl == "reward"
    assert any(n.startswith("reward_model: True read as rl: 'reward'") for n in recipe.notes)
    assert parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]\nreward_model: false\n").rl is None


def test_the_example_recipe_prepares_pairs(tmp_path: Path, monkeypatch) -> None:
    from test_train_rl import prepared_rows

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # example paths are relative to the repository root
    recipe = load_recipe(root / "recipes" / "examples" / "reward.yaml")
    meta, rows = prepared_rows(recipe, tmp_path / "store")
    assert recipe.rl == "reward" and meta["rows_train"] == 4 and meta["rows_validation"] == 1
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") and r["chosen"] != r["rejected"] for r in rows)
