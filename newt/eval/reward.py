"""Evaluation of reward models (`rl: reward`): how often each variant scores the held-out chosen completion above
the rejected one.

Each held-out pair (prepared rows `prompt`, `chosen`, `rejected`) is scored on the ids the trainer saw
(`newt.train.reward.pair_ids`): the reward is the model's single logit at the last non-pad token. Metrics over the
first `eval.max_samples` pairs:

- `pairwise_accuracy`: share of pairs with reward(chosen) > reward(rejected) (ties count as wrong);
- `reward_margin`: mean reward(chosen) − reward(rejected);
- `chosen_reward`, `rejected_reward`: the mean rewards.

Both `pairwise_accuracy` and `reward_margin` are gate metrics (`eval.thresholds`, `eval.max_drop`). The `base`
variant is the base model with the score head the trainer started from (initialised after `set_seed(seed)`, like
the child does), i.e. the reward model before training: about 0.5 accuracy.
"""

from __future__ import annotations

from typing import Any

from newt.config import Recipe
from newt.models import load_scorer


def rewards(model: Any, pad_id: int, sequences: list[list[int]], batch_size: int = 32) -> list[float]:
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
            out += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu().tolist()
    return out


def scores(model: Any, tokenizer: Any, rows: list[dict], recipe: Recipe, context: Any = None) -> dict[str, float]:
    """The reward metrics of one loaded variant on the held-out pairs (an evaluator: model, tokenizer, rows)."""
    from newt.train.reward import pair_ids

    if not any(a.endswith("ForSequenceClassification") for a in model.config.architectures or ()):
        # The base variant loads as a causal LM; a reward model's "before" is the base with the seeded fresh head.
        model = load_scorer(model.name_or_path, dtype="float32", trust_remote_code=recipe.trust_remote_code,
                            seed=recipe.seed, tokenizer=recipe.tokenizer_config or recipe.base_model)
    pad = model.config.pad_token_id
    chosen = rewards(model, pad, [pair_ids(tokenizer, r["prompt"], r["chosen"]) for r in rows])
    rejected = rewards(model, pad, [pair_ids(tokenizer, r["prompt"], r["rejected"]) for r in rows])
    n = max(len(rows), 1)
    return {
        "pairwise_accuracy": round(sum(c > r for c, r in zip(chosen, rejected)) / n, 4),
        "reward_margin": round(sum(c - r for c, r in zip(chosen, rejected)) / n, 5),
        "chosen_reward": round(sum(chosen) / n, 5),
        "rejected_reward": round(sum(rejected) / n, 5),
        "rows": len(rows),
    }
