"""Preference evaluation: how each model variant ranks the held-out chosen and rejected completions.

Every method scores a completion by the policy's log-probability of its tokens given the prompt, as the method's
own reward does:

| method | score of a completion | reward margin (chosen − rejected) |
|---|---|---|
| dpo (sigmoid, hinge, ...), kto | sum of token log-probs | β · ((c − r) − (c_ref − r_ref)), reference = the base model |
| ipo (dpo_loss_type: [ipo]) | mean token log-prob (IPO's length-normalised score) | same, on mean log-probs |
| cpo | sum of token log-probs (reference-free) | β · (c − r) |
| orpo, simpo | mean token log-prob (reference-free) | β · (c − r) |

Metrics (all over the first `eval.max_samples` held-out rows):
- `preference_accuracy`: share of pairs whose chosen score is above the rejected one (the policy's own ranking,
  so the base model has a real value to be compared with; for DPO/IPO/KTO the reference term is the same for every
  variant of a pair, so ranking by score or by the implicit reward margin orders variants identically);
- `reward_margin`: the mean margin above (0 for the base model of a reference-based method, by definition);
- `chosen_logp`, `rejected_logp`: mean summed log-probability of the chosen and rejected completions.

KTO rows are unpaired (`prompt`, `completion`, `label`): desirable and undesirable completions of the same prompt
form the pairs. When the held-out rows hold no such pair, `preference_accuracy` is the share of rows whose KTO
reward β·(log-prob − base log-prob) has the label's sign (positive for desirable), and `reward_margin` the mean
reward of desirable rows minus that of undesirable ones (as TRL logs it); both are 0 for the base model.
"""

from __future__ import annotations

from typing import Any

# method → (length-normalised score, needs the reference model); IPO is DPO with `dpo_loss_type: [ipo]`.
SCORING = {
    "dpo": (False, True),
    "ipo": (True, True),
    "kto": (False, True),
    "cpo": (False, False),
    "orpo": (True, False),
    "simpo": (True, False),
}


def method_of(recipe: Any) -> str:
    if recipe.rl == "dpo" and list(recipe.dpo_loss_type) == ["ipo"]:
        return "ipo"
    return recipe.rl


def pairs(rows: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[int, int]], list[int], list[int]]:
    """(prompt, completion) items to score, (chosen item, rejected item) index pairs, and the chosen (desirable)
    and rejected (undesirable) items."""
    if rows and "chosen" in rows[0]:
        items = [(r["prompt"], r[c]) for r in rows for c in ("chosen", "rejected")]
        index_pairs = [(2 * i, 2 * i + 1) for i in range(len(rows))]
        return items, index_pairs, [c for c, _ in index_pairs], [r for _, r in index_pairs]
    items = [(r["prompt"], r["completion"]) for r in rows]  # KTO: pair desirable with undesirable per prompt
    by_prompt: dict[str, tuple[list[int], list[int]]] = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(r["prompt"], ([], []))[0 if r["label"] else 1].append(i)
    index_pairs = [(c, r) for good, bad in by_prompt.values() for c in good for r in bad]
    return items, index_pairs, [i for i, r in enumerate(rows) if r["label"]], [i for i, r in enumerate(rows)
                                                                               if not r["label"]]


def completion_logps(model: Any, tokenizer: Any, items: list[tuple[str, str]], max_length: int,
                     batch_size: int = 16) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each completion given its prompt; prompt and completion are tokenized
    apart and concatenated, as TRL's preference trainers do, then cut to `max_length` tokens."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for prompt, completion in items:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = (p + c)[:max_length]
        encoded.append((ids, min(len(p), len(ids))))
    out: list[tuple[float, int]] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, (tokens, prompt_len) in enumerate(batch):
                # token t is predicted at position t-1; completion tokens are prompt_len .. len(tokens)-1
                span = logps[row, max(prompt_len, 1) - 1:len(tokens) - 1]
                out.append((float(span.sum()), int(span.numel())))
    return out


def scores(model: Any, tokenizer: Any, rows: list[dict], recipe: Any, context: Any) -> dict[str, float]:
    method = method_of(recipe)
    if method not in SCORING:
        raise ValueError(f"evaluation: no preference scoring for rl: {method}; known: {', '.join(SCORING)}")
    normalised, needs_reference = SCORING[method]
    items, index_pairs, chosen, rejected = pairs(rows)
    logps = completion_logps(model, tokenizer, items, recipe.sequence_len)
    reference = context.reference("preference_logps", lambda m, t: completion_logps(m, t, items, recipe.sequence_len)) \
        if needs_reference else None

    def score(values: list[tuple[float, int]], i: int) -> float:
        total, count = values[i]
        return total / max(count, 1) if normalised else total

    beta = recipe.rl_beta
    margins, wins = [], 0
    for c, r in index_pairs:
        delta = score(logps, c) - score(logps, r)
        wins += int(delta > 0)
        if reference is not None:
            delta -= score(reference, c) - score(reference, r)
        margins.append(beta * delta)
    n = max(len(index_pairs), 1)
    accuracy, margin = wins / n, sum(margins) / n
    if not index_pairs and chosen and rejected and reference is not None:
        # unpaired KTO rows: KTO's own reward, β·(log-prob − reference log-prob), should be positive for desirable
        # and negative for undesirable completions; the margin is the difference of the two means (TRL's)
        reward = [beta * (score(logps, i) - score(reference, i)) for i in range(len(items))]
        accuracy = (sum(reward[i] > 0 for i in chosen) + sum(reward[i] < 0 for i in rejected)) / len(items)
        margin = sum(reward[i] for i in chosen) / len(chosen) - sum(reward[i] for i in rejected) / len(rejected)
    return {
        "preference_accuracy": round(accuracy, 4),
        "reward_margin": round(margin, 5),
        "chosen_logp": round(sum(logps[i][0] for i in chosen) / max(len(chosen), 1), 5),
        "rejected_logp": round(sum(logps[i][0] for i in rejected) / max(len(rejected), 1), 5),
        "pairs": len(index_pairs),
    }
