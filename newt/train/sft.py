"""Supervised fine-tuning (full or LoRA) with TRL's SFTTrainer, one file top to bottom.

    accelerate launch -m newt.train.sft --recipe recipe.json --data <prepared folder> --output <folder>

It runs with or without Dagster: the `trained` asset launches it through Dagster Pipes, anyone can launch it by
hand on a resolved recipe (JSON or YAML) and a `prepared` artifact folder. Labels come from the prepared data as
they are (newt's masking engine decided them); TRL only pads them.

Output folder: `adapter/` (LoRA adapter + tokenizer) or `model/` (full weights + tokenizer), `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback, set_seed

from newt.config import Recipe
from newt.models import load_model, load_tokenizer
from newt.prepare import load_prepared
from newt.train.report import Reporter


class StreamMetrics(TrainerCallback):
    """Sends step, loss, learning rate, grad norm and tokens/s to the reporter at each logging step."""

    def __init__(self, reporter: Reporter, tokens_per_step: float):
        self.reporter = reporter
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        row = {"step": state.global_step, "loss": round(float(logs["loss"]), 5),
               "learning_rate": float(logs.get("learning_rate", 0.0)),
               "grad_norm": round(float(logs.get("grad_norm", float("nan"))), 5),
               "tokens_per_second": round(self.tokens_per_step * state.global_step / elapsed, 1)}
        self.history.append(row)
        self.reporter.log(" ".join(f"{k}={v}" for k, v in row.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="resolved recipe (.json or .yaml)")
    parser.add_argument("--data", required=True, help="prepared artifact folder")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--base-model", help="local folder or hub name overriding recipe.base_model")
    args = parser.parse_args(argv)

    # 1. config
    text = Path(args.recipe).read_text()
    recipe = Recipe.model_validate(json.loads(text) if args.recipe.endswith(".json") else yaml.safe_load(text))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    reporter = Reporter()
    set_seed(recipe.seed)
    base = args.base_model or recipe.base_model

    # 2. tokenizer, model, data
    tokenizer = load_tokenizer(recipe.tokenizer_config or base, trust_remote_code=recipe.trust_remote_code)
    model = load_model(base, trust_remote_code=recipe.trust_remote_code, dtype=torch.float32)
    train = load_prepared(Path(args.data), "train").select_columns(["input_ids", "labels"])
    peft_config = None
    if recipe.adapter == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
            target_modules=recipe.lora_target_modules, modules_to_save=recipe.lora_modules_to_save or None,
            task_type="CAUSAL_LM",
        )

    # 3. train
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(output / "checkpoints"),
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_train_epochs=recipe.num_epochs,
        max_steps=recipe.max_steps or -1,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_steps,
        optim=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        gradient_checkpointing=False,  # TRL defaults it on; on tiny CPU models it only costs time
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are already tokenized and labelled by newt
        disable_tqdm=True,
    )
    mean_len = sum(len(x) for x in train["input_ids"]) / max(len(train), 1)
    stream = StreamMetrics(reporter, mean_len * recipe.micro_batch_size * recipe.gradient_accumulation_steps)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[stream])
    result = trainer.train()

    # 4. save (rank 0)
    if trainer.is_world_process_zero():
        target = output / ("adapter" if peft_config else "model")
        trainer.model.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
        shutil.rmtree(output / "checkpoints", ignore_errors=True)
        final_loss = stream.history[-1]["loss"] if stream.history else result.training_loss
        reporter.finish(output, {
            "method": "sft",
            "adapter": recipe.adapter or "full",
            "final_loss": final_loss,
            "train_loss": round(float(result.training_loss), 5),
            "global_step": int(result.global_step),
            "world_size": int(trainer.args.world_size),
            "train_rows": len(train),
            "train_runtime_s": round(float(result.metrics.get("train_runtime", math.nan)), 2),
            "tokens_per_second": stream.history[-1]["tokens_per_second"] if stream.history else None,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "loss_history": stream.history[-20:],
        })
    reporter.close()


if __name__ == "__main__":
    main()
