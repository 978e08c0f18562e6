"""What every training child (`sft.py`, `dpo.py`, `grpo.py`) shares, as plain functions: reading its command line,
loading the base model the recipe asks for (full, LoRA, QLoRA; dtype, attention kernel), the TrainingArguments
common to all TRL trainers, checkpoint discovery for resume, and the metrics stream.

Each child stays one readable file that calls these in order; there is no trainer base class.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from newt.config import Recipe
from newt.train.hardware import check_settings
from newt.train.report import Reporter

CHECKPOINTS = "checkpoints"


@dataclass
class ChildArgs:
    recipe: Recipe
    data: Path
    output: Path
    base_model: str


def parse_args(doc: str | None, argv: list[str] | None = None) -> ChildArgs:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="resolved recipe (.json or .yaml)")
    parser.add_argument("--data", required=True, help="prepared artifact folder")
    parser.add_argument("--output", required=True, help="output folder (checkpoints are kept in it until the end)")
    parser.add_argument("--base-model", help="local folder or hub name overriding recipe.base_model")
    args = parser.parse_args(argv)
    text = Path(args.recipe).read_text()
    recipe = Recipe.model_validate(json.loads(text) if args.recipe.endswith(".json") else yaml.safe_load(text))
    problems = check_settings(recipe)
    if problems:
        raise SystemExit("recipe settings cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    return ChildArgs(recipe, Path(args.data), output, args.base_model or recipe.base_model)


def load_base(recipe: Recipe, base: str) -> Any:
    """The base model in the dtype, attention kernel and quantization the recipe asks for."""
    import torch

    from newt.models import load_model

    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    kwargs: dict[str, Any] = {"attn_implementation": recipe.attn_implementation}
    if recipe.adapter == "qlora":
        from transformers import BitsAndBytesConfig

        # nf4 with double quantization: the QLoRA paper's setting (Dettmers et al. 2023), as in Axolotl.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        )
    model = load_model(base, trust_remote_code=recipe.trust_remote_code, dtype=dtype, **kwargs)
    if recipe.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
    return model


def peft_config(recipe: Recipe) -> Any:
    if recipe.adapter is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        target_modules=recipe.lora_target_modules, modules_to_save=recipe.lora_modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def training_kwargs(recipe: Recipe, output: Path) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config (SFTConfig, DPOConfig, KTOConfig, GRPOConfig)."""
    import torch

    return {
        "output_dir": str(output / CHECKPOINTS),
        "per_device_train_batch_size": recipe.micro_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "num_train_epochs": recipe.num_epochs,
        "max_steps": recipe.max_steps or -1,
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler,
        "warmup_steps": recipe.warmup_steps,
        "optim": recipe.optimizer,
        "weight_decay": recipe.weight_decay,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps",
        "save_steps": recipe.save_steps,
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "bf16": recipe.mixed_precision == "bf16",
        "fp16": recipe.mixed_precision == "fp16",
        "tf32": recipe.tf32 or None,
        "gradient_checkpointing": recipe.gradient_checkpointing,  # TRL defaults it on; we follow the recipe
        "torch_compile": recipe.torch_compile,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False if recipe.num_processes * recipe.num_machines > 1 else None,
        # Several machines of their own (launcher local): each keeps checkpoints in its own work folder to resume
        # from. The Ray launcher's nodes share one work folder (docs/scaling.md): one writer per checkpoint.
        "save_on_each_node": recipe.num_machines > 1 and recipe.launcher == "local",
    }


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

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.first_step = state.global_step  # non-zero after a resume

    def on_log(self, args, state, control, logs=None, **kwargs):
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
        for extra in ("rewards/chosen", "rewards/margins", "reward", "kl"):
            if extra in logs:
                row[extra.replace("/", "_")] = round(float(logs[extra]), 5)
        self.history.append(row)
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
    }


def save_final(trainer: Any, tokenizer: Any, output: Path, adapter: bool) -> Path:
    """Rank 0 saves the adapter (or the full model) with its tokenizer; checkpoints are dropped from the artifact."""
    import shutil

    target = output / ("adapter" if adapter else "model")
    trainer.model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    return target
