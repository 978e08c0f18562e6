"""GRPO evaluation: the recipe's own reward functions (`trl.reward_funcs`, resolved by `newt.rewards` exactly as
training resolves them) on one greedy generation per held-out prompt.

Metrics:
- `reward`: mean over prompts of the weighted sum of the functions' rewards (`trl.reward_weights`, 1 each when
  unset) — what TRL logs as `reward` during training, on held-out prompts and greedy decoding instead of samples;
- `reward_<function>`: each function's mean on its own (a function returning None for a row is left out of that
  row's sum, as TRL does);
- `stopped`: share of generations that end with the tokenizer's end-of-sequence token within
  `trl.max_completion_length` tokens (the rest were cut off).
"""

from __future__ import annotations

import math
from typing import Any


def scores(model: Any, tokenizer: Any, rows: list[dict], recipe: Any, context: Any) -> dict[str, float]:
    from newt.generate import generate_answers
    from newt.rewards import resolve

    cfg = recipe.trl
    funcs = [resolve(spec, max_completion_length=cfg.max_completion_length) for spec in cfg.reward_funcs]
    weights = list(cfg.reward_weights) if cfg.reward_weights else [1.0] * len(funcs)
    prompts = [r["prompt"] for r in rows]
    generated = generate_answers(model, tokenizer, prompts, cfg.max_completion_length)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
    columns = {name: [r[name] for r in rows] for name in (rows[0] if rows else {}) if name != "prompt"}
    totals = [0.0] * len(rows)
    out: dict[str, float] = {}
    for spec, func, weight in zip(cfg.reward_funcs, funcs, weights):
        values = func(prompts=prompts, completions=completions, completion_ids=[list(ids) for ids in generated],
                      trainer_state=None, **columns)
        given = [v for v in values if v is not None and not math.isnan(v)]
        out[f"reward_{reward_name(spec)}"] = round(sum(given) / max(len(given), 1), 5)
        totals = [t + weight * v if v is not None and not math.isnan(v) else t for t, v in zip(totals, values)]
    eos = tokenizer.eos_token_id
    stopped = sum(1 for ids in generated if len(ids) and ids[-1] == eos)
    n = max(len(rows), 1)
    return {"reward": round(sum(totals) / n, 5), **out, "stopped": round(stopped / n, 4), "rows": len(rows)}


def reward_name(spec: str) -> str:
    """A metric-name-safe short name of a `trl.reward_funcs` entry: `exact_match`, `regex`, `score` (of a path)."""
    if spec.startswith("regex:"):
        return "regex"
    return spec.replace(":", ".").rsplit(".", 1)[-1].replace("/", "_")
