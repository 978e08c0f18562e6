"""What every training child (`sft.py`, `dpo.py`, `grpo.py`) shares, as plain functions: reading its command line,
loading the base model the recipe asks for (full, LoRA, QLoRA; dtype, attention kernel), the TrainingArguments
common to all TRL trainers, checkpoint discovery for resume, and the metrics stream.

Each child stays one readable file that calls these in order; there is no trainer base class.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from newt.config import Recipe, RecipeError, parse_resolved
from newt.plots import curve_rows
import newt.train.args as train_args
from newt.train.hardware import check_settings
from newt.train.report import Reporter

USES_LIBRARIES = ("bitsandbytes",)  # QLoRA bases load through transformers' BitsAndBytesConfig (newt.codeversion)

CHECKPOINTS = "checkpoints"


@dataclass
class ChildArgs:
    recipe: Recipe
    data: Path
    output: Path
    base_model: str
    recipe_name: str = "recipe"  # the recipe file's stem: names the tracker run (newt/tracking.py)
    stage_key: str = ""  # the `trained` key, put on the tracker run


def parse_args(doc: str | None, argv: list[str] | None = None) -> ChildArgs:
    from newt.train.lifetime import die_with_parent

    die_with_parent()  # first: a child whose run is gone must not keep training into the work folder
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="resolved recipe (.json or .yaml)")
    parser.add_argument("--data", required=True, help="prepared artifact folder")
    parser.add_argument("--output", required=True, help="output folder (checkpoints are kept in it until the end)")
    parser.add_argument("--base-model", help="local folder or hub name overriding recipe.base_model")
    parser.add_argument("--recipe-name", default="recipe", help="recipe name (tracker run name)")
    parser.add_argument("--stage-key", default="", help="the trained stage's key (a tracker run parameter)")
    args = parser.parse_args(argv)
    try:  # the one recipe parser (newt.config), so a hand-made recipe gets newt's own errors too
        recipe = parse_resolved(args.recipe)
    except RecipeError as exc:
        raise SystemExit(str(exc)) from None
    problems = check_settings(recipe)
    if problems:
        raise SystemExit("recipe settings cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    return ChildArgs(recipe, Path(args.data), output, args.base_model or recipe.base_model, args.recipe_name,
                     args.stage_key)


def load_base(recipe: Recipe, base: str) -> Any:
    """The base model in the dtype, attention kernel and quantization the recipe asks for."""
    from newt.models import load_model

    kwargs = train_args.model_kwargs(recipe)  # dtype, attention kernel, bitsandbytes quantization
    model = load_model(base, trust_remote_code=recipe.trust_remote_code, **kwargs)
    if recipe.adapter == "qlora" or recipe.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
    return model


def peft_config(recipe: Recipe, model: Any = None, new_token_ids: list[int] | None = None) -> Any:
    if recipe.adapter is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**train_args.lora_kwargs(recipe, model, new_token_ids))


def training_kwargs(recipe: Recipe, output: Path, track: Any = None, *, has_eval: bool = False) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config (SFTConfig, DPOConfig, KTOConfig, GRPOConfig): newt.train.args;
    `track` is the child's `newt.tracking.Tracking` (report_to, run_name)."""
    kwargs = train_args.training_kwargs(recipe, output / CHECKPOINTS, has_eval=has_eval)
    return {**kwargs, **(track.kwargs if track is not None else {})}


def last_checkpoint(output: Path) -> tuple[str | None, int]:
    """The newest complete checkpoint under `output/checkpoints` (path, step), or (None, 0)."""
    found = []
    for d in (output / CHECKPOINTS).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        # trainer_state.json is written last by Trainer._save_checkpoint: without it the save was cut off.
        if m and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    if not found:
        return None, 0
    step, path = max(found)
    return str(path), step


class StreamMetrics(TrainerCallback):
    """Sends step, loss, learning rate, grad norm and tokens/s to the reporter at each logging step.

    `tokens_per_step` counts every token the step processes across all processes (rows × length × world size).
    """

    def __init__(self, reporter: Reporter, tokens_per_step: float, loss_key: str = "loss"):
        self.reporter = reporter
        self.tokens_per_step = tokens_per_step
        self.loss_key = loss_key
        self.start = time.perf_counter()
        self.first_step: int | None = None
        self.history: list[dict] = []
        self.eval_history: list[dict] = []  # held-out loss during training (evals_per_epoch / eval_steps)
        # (micro batches consumed on this process) -> real tokens, where TRL's own num_tokens miscounts (BinCollator);
        # times the world size: exact on one process, shards of equal size assumed on several
        self.count_tokens: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.first_step = state.global_step  # non-zero after a resume

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            row = {"step": state.global_step, "eval_loss": round(float(logs["eval_loss"]), 6)}
            self.eval_history.append(row)
            self.reporter.log(" ".join(f"{k}={v}" for k, v in row.items()))
        if not logs or self.loss_key not in logs:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        steps = state.global_step - (self.first_step or 0)
        row = {"step": state.global_step, "loss": round(float(logs[self.loss_key]), 6),
               "learning_rate": float(logs.get("learning_rate", 0.0)),
               "grad_norm": round(float(logs.get("grad_norm", float("nan"))), 5),
               "tokens_per_second": round(self.tokens_per_step * steps / elapsed, 1)}
        if "num_tokens" in logs:  # TRL's count of real (unpadded) tokens seen so far, all processes
            row["num_tokens"] = int(float(logs["num_tokens"]))
        if self.count_tokens is not None:
            micro = steps * args.gradient_accumulation_steps
            row["num_tokens"] = int(self.count_tokens(micro)) * max(int(args.world_size), 1)
        for extra in ("rewards/chosen", "rewards/margins", "reward", "kl", "accuracy"):
            if extra in logs:
                row[extra.replace("/", "_")] = round(float(logs[extra]), 5)
        self.history.append(row)
        logs["tokens_per_second"] = row["tokens_per_second"]  # the trackers' callbacks run after this one
        self.reporter.log(" ".join(f"{k}={v}" for k, v in row.items()))


def final_metrics(method: str, recipe: Recipe, trainer: Any, result: Any, stream: StreamMetrics, rows: int,
                  resumed_from_step: int) -> dict[str, Any]:
    last = stream.history[-1] if stream.history else {}
    return {
        "method": method,
        "adapter": recipe.adapter or "full",
        "final_loss": last.get("loss", round(float(result.training_loss), 6)),
        "train_loss": round(float(result.training_loss), 6),
        "global_step": int(result.global_step),
        "resumed_from_step": resumed_from_step,
        "world_size": int(trainer.args.world_size),
        "train_rows": rows,
        "train_runtime_s": round(float(result.metrics.get("train_runtime", math.nan)), 2),
        "tokens_per_second": last.get("tokens_per_second"),
        "num_tokens": last.get("num_tokens"),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "loss_history": stream.history[-20:],
        **({"eval_loss_history": stream.eval_history[-20:]} if stream.eval_history else {}),
        # the whole run, thinned, for the loss pictures (newt/plots.py); the two lists above are its last rows
        "loss_curve_rows": curve_rows(stream.history, stream.eval_history),
    }


def save_final(trainer: Any, tokenizer: Any, output: Path, adapter: bool) -> Path:
    """Rank 0 saves the adapter (or the full model) with its tokenizer; checkpoints are dropped from the artifact."""
    import shutil

    target = output / ("adapter" if adapter else "model")
    trainer.model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(output / "resume-from", ignore_errors=True)  # a remote resume_from_checkpoint's local copy
    return target
