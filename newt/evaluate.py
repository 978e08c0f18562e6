"""The `evaluation` stage: score each model variant on the held-out split, and the gates that judge the scores.

Metrics per variant (`base`, `merged`, `quantized`): `loss` (mean cross-entropy on the supervised tokens, teacher
forced), `perplexity` (its exponential) and `exact_match` (greedy generation for the conversation minus its last
assistant turn, compared with that turn after stripping whitespace). Gates (`eval.thresholds`) apply to the
fine-tuned variants; they are evaluated on every materialization, cache hits included, so changing a threshold
never needs a re-evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from newt.config import EVAL_METRICS, Recipe
from newt.pipeline import StageRun

FINE_TUNED = ("merged", "quantized")


def load_variant(variant: str, run: StageRun):
    from newt import models
    from newt.merge import model_dir

    recipe = run.recipe
    if variant == "base":
        return (models.load_model(recipe.base_model, trust_remote_code=recipe.trust_remote_code, dtype="float32"),
                models.load_tokenizer(recipe.tokenizer_config or recipe.base_model,
                                      trust_remote_code=recipe.trust_remote_code))
    if variant == "merged":
        folder = str(model_dir(run.upstream["merged"]))
        return models.load_model(folder, dtype="float32"), models.load_tokenizer(folder)
    from newt.quantize import load_quantized

    return load_quantized(Path(run.upstream["quantized"]) / "model", recipe.quantize.method)


def score(model: Any, tokenizer: Any, rows: list[dict], recipe: Recipe, template: str, batch_size: int = 32) -> dict:
    import torch

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total_loss, total_tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            # teacher-forced loss on the supervised tokens
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
            mask = (torch.arange(width)[None, :] < torch.tensor([len(r["input_ids"]) for r in batch])[:, None]).long()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
            total_loss += float(loss)
            total_tokens += int((shift_labels != -100).sum())
            # greedy generation of the last assistant turn, left-padded batch
            prompts, answers = [], []
            for r in batch:
                conv = json.loads(r["messages"])
                prompts.append(tokenizer.apply_chat_template(conv[:-1], chat_template=template, tokenize=False,
                                                             add_generation_prompt=True))
                answers.append(str(conv[-1]["content"]).strip())
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            width = max(len(e) for e in enc)
            gen_ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
            gen_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
            out = model.generate(input_ids=gen_ids, attention_mask=gen_mask, max_new_tokens=recipe.eval.max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for row_out, answer in zip(out[:, width:], answers):
                text = tokenizer.decode(row_out, skip_special_tokens=True).strip()
                correct += text == answer
    loss = total_loss / max(total_tokens, 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            "exact_match": round(correct / max(len(rows), 1), 4), "rows": len(rows)}


def build(run: StageRun) -> dict[str, Any]:
    from newt import templates
    from newt.prepare import load_prepared

    recipe = run.recipe
    held_out = load_prepared(run.upstream["prepared"], "validation")
    if len(held_out) == 0:
        raise ValueError("evaluation: the prepared data has no validation rows; set val_set_size (e.g. 0.05 or 200)")
    rows = [held_out[i] for i in range(min(len(held_out), recipe.eval.max_samples))]
    results: dict[str, dict] = {}
    for variant in recipe.eval.models:
        model, tokenizer = load_variant(variant, run)
        results[variant] = score(model, tokenizer, rows, recipe, templates.template_for(recipe, tokenizer))
        run.log(f"evaluation: {variant}: {results[variant]}")
    (Path(run.workdir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return {"results": results}


def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
    return {f"{variant}/{name}": value for variant, m in results.items() for name, value in m.items() if name != "rows"}


def results_table(results: dict[str, dict]) -> str:
    names = list(EVAL_METRICS)
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {v} | " + " | ".join(str(m.get(n)) for n in names) + " |" for v, m in results.items()]
    return "\n".join(lines)


def gates(results: dict[str, dict], thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """One verdict per (fine-tuned variant, threshold): exact_match is a minimum, loss/perplexity are maxima."""
    verdicts = []
    for variant in FINE_TUNED:
        if variant not in results:
            continue
        for metric, limit in thresholds.items():
            value = results[variant][metric]
            passed = value >= limit if EVAL_METRICS[metric] == "min" else value <= limit
            op = ">=" if EVAL_METRICS[metric] == "min" else "<="
            verdicts.append({"variant": variant, "metric": metric, "value": value, "threshold": limit,
                             "passed": bool(passed), "text": f"{variant} {metric} = {value} (needs {op} {limit})"})
    return verdicts
