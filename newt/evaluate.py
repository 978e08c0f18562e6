"""The `evaluation` stage: score each model variant, and the gates that judge the scores.

Variants (`eval.models`): `base`, `merged`, `quantized` (the first quantize output) and `quantized_<method>` (each
further output). Which metrics depends on the training method: `evaluators()` maps it to one scoring function
(preference methods: newt/eval/preference.py, GRPO: newt/eval/grpo.py). SFT metrics per variant, all from the
first `eval.max_samples` held-out rows of the prepared data:

- `loss` (mean cross-entropy on the supervised tokens, teacher forced) and `perplexity` (its exponential);
- unless the data is a text format (`eval.generate`), from one greedy generation of the conversation's last
  assistant turn (`generate_answers`), compared with that turn after stripping whitespace: `exact_match` (equal), `contains` (the reference appears in the output) and, when `eval.answer_regex`
  is set, `regex_match` (the regex's first match in the output, group 1 if it has groups, equals the reference);
- `<task>/<metric>` for each lm-evaluation-harness task in `eval.lm_eval_tasks` (run on the loaded model object,
  so quantized variants are scored exactly as they load).

Gates are pure functions of those numbers (`threshold_verdicts`, `regression_verdicts`, `retention_verdicts`); the
asset layer runs them on every materialization, cache hits included, so changing a gate never re-evaluates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newt import IGNORE_INDEX
from newt.config import Recipe, metric_direction
from newt.eval.answers import answer_scores  # noqa: F401 - part of this module's API (tests, vision_eval)
from newt.generate import generate_answers
from newt.stage import StageRun

Results = dict[str, dict[str, float]]  # {variant: {metric: value}}


# --- scoring ---------------------------------------------------------------------------------------------------


def load_variant(variant: str, run: StageRun) -> tuple[Any, Any]:
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

    return load_quantized(Path(run.upstream[variant]) / "model")  # method read from its quantize.json


def generates(recipe: Recipe) -> bool:
    """Whether the SFT evaluation generates answers (`exact_match`, `contains`, `regex_match`): `eval.generate`,
    by default on for chat formats and off when every dataset is a text format (`completion`, `input_output`),
    where an exact match of free text continuing a document means nothing."""
    from newt.formats import TEXT_TYPES

    if recipe.eval.generate is not None:
        return recipe.eval.generate
    return not all(spec.type in TEXT_TYPES for spec in recipe.datasets)


def answer_prompt(row: dict, tokenizer: Any, template: str) -> tuple[str, str]:
    """(prompt text, reference answer) of a held-out SFT row: the conversation up to its last turn, chat-templated
    with the generation prompt; a text-format row (segments with roles `input`/`output`) is its segments before
    the last one, as plain text."""
    conv = json.loads(row["messages"])
    if conv and {m["role"] for m in conv} <= {"input", "output"}:
        return "".join(str(m["content"]) for m in conv[:-1]), str(conv[-1]["content"])
    prompt = tokenizer.apply_chat_template(conv[:-1], chat_template=template, tokenize=False, add_generation_prompt=True)
    return prompt, str(conv[-1]["content"])


def score(model: Any, tokenizer: Any, rows: list[dict], recipe: Recipe, template: str, batch_size: int = 32) -> dict:
    import torch

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total_loss, total_tokens = 0.0, 0
    hits: dict[str, int] = {}
    prompts, answers = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            # teacher-forced loss on the supervised tokens
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
            labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in batch])
            mask = (torch.arange(width)[None, :] < torch.tensor([len(r["input_ids"]) for r in batch])[:, None]).long()
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss += float(loss)
            total_tokens += int((shift_labels != IGNORE_INDEX).sum())
    if generates(recipe):
        prompts, answers = zip(*(answer_prompt(r, tokenizer, template) for r in rows)) if rows else ((), ())
        for ids, answer in zip(generate_answers(model, tokenizer, list(prompts), recipe.eval.max_new_tokens),
                               answers):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for name, ok in answer_scores(text, answer, recipe.eval.answer_regex).items():
                hits[name] = hits.get(name, 0) + int(ok)
    loss = total_loss / max(total_tokens, 1)
    n = max(len(rows), 1)
    return {"loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            **{name: round(count / n, 4) for name, count in hits.items()}, "rows": len(rows)}


def lm_eval_scores(model: Any, tokenizer: Any, recipe: Recipe, batch_size: int = 8) -> dict[str, float]:
    """lm-evaluation-harness tasks on an already loaded model: {`<task>/<metric>`: value}."""
    try:
        import lm_eval
    except ImportError as exc:
        raise ImportError("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'newt[eval]' "
                          "(lm-eval==0.4.13)") from exc
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    cfg = recipe.eval
    include = str(Path(cfg.lm_eval_include_path).resolve()) if cfg.lm_eval_include_path else None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.lm_eval_tasks), limit=cfg.lm_eval_limit,
                                  task_manager=TaskManager(include_path=include), log_samples=False,
                                  bootstrap_iters=0, random_seed=recipe.seed, numpy_random_seed=recipe.seed,
                                  torch_random_seed=recipe.seed, fewshot_random_seed=recipe.seed)
    if out is None:  # only on non-zero ranks of a distributed run, which the stage never starts
        raise RuntimeError("lm-eval returned no results")
    return lm_eval_metrics(out["results"])


def lm_eval_metrics(task_results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's `results` section → {`<task>/<metric>`: value}; the default `none` filter is dropped from the name,
    other filters are kept (`exact_match_strict-match`); standard errors and aliases are left out."""
    metrics = {}
    for task, values in task_results.items():
        for name, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "_stderr" in name:
                continue
            metric, _, filt = name.partition(",")
            metrics[f"{task}/{metric if filt in ('', 'none') else f'{metric}_{filt}'}"] = round(float(value), 5)
    return metrics


Evaluator = Callable[[Any, Any, list[dict], Recipe, "EvalContext"], dict[str, float]]


def sft_scores(model: Any, tokenizer: Any, rows: list[dict], recipe: Recipe, context: EvalContext) -> dict:
    from newt import templates

    return score(model, tokenizer, rows, recipe, templates.template_for(recipe, tokenizer))


def evaluators() -> dict[str, Evaluator]:
    """Training method (`rl`, or `sft`) → the function that scores one loaded variant on the held-out rows.

    The one shared place of per-method evaluation: each method's code lives in its own module (newt/eval/), and a
    new method adds one entry here. ORPO, SimPO and CPO are reference-free preference methods (newt/eval/preference.py).
    """
    from newt.eval import grpo, preference, reward

    return {
        "sft": sft_scores,
        "dpo": preference.scores,
        "kto": preference.scores,
        "orpo": preference.scores,
        "simpo": preference.scores,
        "cpo": preference.scores,
        "grpo": grpo.scores,
        "reward": reward.scores,  # reward models: pairwise accuracy (loaded as sequence classifiers, newt.models)
    }


@dataclass
class EvalContext:
    """What an evaluator may need beyond its own variant: numbers computed once on the base model (the reference
    of DPO/IPO/KTO rewards), reusing the base when it is the variant being scored."""

    run: StageRun
    base: tuple[Any, Any] | None = None  # (model, tokenizer) while the base variant is loaded
    cache: dict[str, Any] = field(default_factory=dict)

    def reference(self, name: str, compute: Callable[[Any, Any], Any]) -> Any:
        if name not in self.cache:
            model, tokenizer = self.base or load_variant("base", self.run)
            self.cache[name] = compute(model, tokenizer)
        return self.cache[name]


def build(run: StageRun) -> dict[str, Any]:
    from newt.prepare import load_prepared

    recipe = run.recipe
    method = recipe.rl or "sft"
    if method not in evaluators():
        raise ValueError(f"evaluation: rl: {method} has no evaluator; known methods: {', '.join(evaluators())}")
    if recipe.processor_type:  # rows with their images: newt/vision_eval.py
        from newt import vision_eval

        return vision_eval.build(run)
    held_out = load_prepared(run.upstream["prepared"], "validation")
    if len(held_out) == 0:
        raise ValueError("evaluation: the prepared data has no validation rows; set val_set_size (e.g. 0.05 or 200)")
    rows = [held_out[i] for i in range(min(len(held_out), recipe.eval.max_samples))]
    results: dict[str, dict] = {}
    evaluate, context = evaluators()[method], EvalContext(run)
    for variant in recipe.eval.models:
        model, tokenizer = load_variant(variant, run)
        context.base = (model, tokenizer) if variant == "base" else None
        results[variant] = evaluate(model, tokenizer, rows, recipe, context)
        if recipe.eval.lm_eval_tasks:
            results[variant].update(lm_eval_scores(model, tokenizer, recipe))
        run.log(f"evaluation: {variant}: {results[variant]}")
    (Path(run.workdir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return {"results": results}


# --- presenting ----------------------------------------------------------------------------------------------


def flat_metrics(results: Results) -> dict[str, float]:
    """{`<variant>/<metric>`: value}: numeric metadata, so the UI plots each across materializations."""
    return {f"{variant}/{name}": value for variant, m in results.items() for name, value in m.items() if name != "rows"}


def unflatten(flat: dict[str, Any]) -> Results:
    """The inverse of `flat_metrics` (for metrics read back from a previous materialization's metadata)."""
    results: Results = {}
    for name, value in flat.items():
        variant, sep, metric = name.partition("/")
        if sep and isinstance(value, (int, float)) and not isinstance(value, bool):
            results.setdefault(variant, {})[metric] = float(value)
    return results


def results_table(results: Results) -> str:
    names = list(dict.fromkeys(n for m in results.values() for n in m if n != "rows"))
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {v} | " + " | ".join(str(m.get(n, "")) for n in names) + " |" for v, m in results.items()]
    return "\n".join(lines)


# --- gates ---------------------------------------------------------------------------------------------------


def fine_tuned(results: Results) -> list[str]:
    return [v for v in results if v != "base"]


def quantized(results: Results) -> list[str]:
    return [v for v in results if v == "quantized" or v.startswith("quantized_")]


def _verdict(gate: str, variant: str, metric: str, value: float | None, passed: bool, text: str, **extra: Any) -> dict:
    return {"gate": gate, "variant": variant, "metric": metric, "value": value, "passed": bool(passed),
            "text": text, **extra}


def threshold_verdicts(results: Results, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """One verdict per (fine-tuned variant, threshold): higher-is-better metrics need at least the threshold,
    loss and perplexity at most."""
    verdicts = []
    for variant in fine_tuned(results):
        for metric, limit in thresholds.items():
            value = results[variant].get(metric)
            if value is None:
                verdicts.append(_verdict("threshold", variant, metric, None, False,
                                         f"{variant} has no metric {metric} (is the task or regex set?)"))
                continue
            higher = metric_direction(metric) == "min"
            passed = value >= limit if higher else value <= limit
            verdicts.append(_verdict("threshold", variant, metric, value, passed,
                                     f"{variant} {metric} = {value} (needs {'>=' if higher else '<='} {limit})",
                                     threshold=limit))
    return verdicts


def worsening(metric: str, value: float, reference: float) -> float:
    """How much worse `value` is than `reference`, in the metric's units (negative = better)."""
    return reference - value if metric_direction(metric) == "min" else value - reference


def reference_metrics(baseline: str, results: Results, previous: Results | None) -> tuple[Results, str]:
    """What `max_drop` compares each fine-tuned variant with, and a phrase naming it.

    `previous`: the same variant in the previous (gate-passing) materialization; `base`: the base model of this run;
    anything else: a JSON file of `{variant: {metric: value}}` or `{metric: value}` (then for every variant).
    """
    if baseline == "previous":
        return (previous or {}), "the previous materialization"
    if baseline == "base":
        if "base" not in results:
            raise ValueError("eval.baseline is 'base' but the base model was not evaluated; add base to eval.models")
        return {v: results["base"] for v in fine_tuned(results)}, "the base model"
    path = Path(baseline)
    if not path.is_file():
        raise ValueError(f"eval.baseline: {baseline!r} is neither 'previous', 'base' nor an existing JSON file of "
                         "metrics; write one with {variant: {metric: value}} or {metric: value}")
    data = json.loads(path.read_text())
    if all(isinstance(v, dict) for v in data.values()):
        return {v: {k: float(x) for k, x in m.items()} for v, m in data.items()}, f"baseline file {baseline}"
    return {v: {k: float(x) for k, x in data.items()} for v in fine_tuned(results)}, f"baseline file {baseline}"


def regression_verdicts(results: Results, reference: Results, max_drop: dict[str, float],
                        reference_name: str = "the baseline") -> list[dict[str, Any]]:
    """One verdict per (fine-tuned variant, metric in max_drop) that the reference has: worse by at most max_drop."""
    verdicts = []
    for variant in fine_tuned(results):
        for metric, allowed in max_drop.items():
            value, ref = results[variant].get(metric), reference.get(variant, {}).get(metric)
            if value is None or ref is None:
                continue
            worse = round(worsening(metric, value, ref), 6)
            verdicts.append(_verdict(
                "regression", variant, metric, value, worse <= allowed + 1e-9,
                f"{variant} {metric} = {value} vs {ref} in {reference_name}: worse by {worse} (allowed {allowed})",
                reference=ref, worsening=worse, max_drop=allowed))
    return verdicts


def retention(metric: str, value: float, merged: float) -> float:
    """quantized/merged for higher-is-better metrics, merged/quantized for loss and perplexity; 1.0 = no loss."""
    num, den = (value, merged) if metric_direction(metric) == "min" else (merged, value)
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def retention_verdicts(results: Results, min_retention: dict[str, float]) -> list[dict[str, Any]]:
    """One verdict per (quantized variant, metric in min_retention): keeps at least that share of merged's value."""
    verdicts = []
    for variant in quantized(results):
        for metric, share in min_retention.items():
            value, merged = results[variant].get(metric), results.get("merged", {}).get(metric)
            if value is None or merged is None:
                verdicts.append(_verdict("retention", variant, metric, value, False,
                                         f"{variant} vs merged {metric}: needs both evaluated (add merged to "
                                         "eval.models)"))
                continue
            kept = round(retention(metric, value, merged), 6)
            verdicts.append(_verdict("retention", variant, metric, value, kept >= share - 1e-9,
                                     f"{variant} {metric} = {value} vs merged {merged}: retains {kept} "
                                     f"(needs >= {share})", merged=merged,
                                     retention=kept if math.isfinite(kept) else None, min_retention=share))
    return verdicts


def gates(results: Results, recipe: Recipe, previous: Results | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every gate's verdicts, by gate kind (one asset check each): threshold, regression, retention."""
    cfg = recipe.eval
    reference, name = reference_metrics(cfg.baseline, results, previous) if cfg.max_drop else ({}, "")
    return {
        "threshold": threshold_verdicts(results, cfg.thresholds),
        "regression": regression_verdicts(results, reference, cfg.max_drop, name),
        "retention": retention_verdicts(results, cfg.min_retention),
    }
