"""Reward modelling with TRL's RewardTrainer (`rl: reward`; Axolotl's `reward_model: true`), one file top to bottom.

    accelerate launch -m newt.train.reward --recipe recipe.json --data <prepared folder> --output <folder>

The prepared rows are DPO's (newt/preference.py): chat-templated `prompt`, `chosen`, `rejected` text. The base model
gets a sequence-classification head with one output (`AutoModelForSequenceClassification`, `num_labels=1`; the head
is initialised after `set_seed(seed)`, so it is the same on every run) and learns to score prompt + chosen above
prompt + rejected (Bradley-Terry loss, `-log σ(r_chosen - r_rejected)`). With LoRA the head (`score`) is trained in
full next to the adapter. Pairs are tokenized here by `pair_ids`, which the evaluation uses too
(newt/eval/reward.py), so a pair is scored on exactly the tokens it was trained on; pairs longer than
`sequence_len` are dropped (as TRL does) and counted.

Checkpoints go to `<output>/checkpoints` every `save_steps` and a relaunch resumes from the newest. Output:
`adapter/` (LoRA adapter with the `score` head) or `model/` (a full sequence-classification model), each with the
tokenizer, and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import set_seed

from newt import tracking, tracking_callback
from newt.config import Recipe
from newt.models import load_tokenizer
from newt.prepare import load_prepared
from newt.train.child import (
    StreamMetrics,
    final_metrics,
    parse_args,
    peft_config,
    save_final,
    training_kwargs,
)
from newt.train.report import Reporter
from newt.train.resume import resume_point


def pair_ids(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """The token ids a reward model scores for one side of a pair: the templated prompt followed by the completion
    (the template's own special tokens are in the text already, so none are added)."""
    return tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]


def load_reward_model(recipe: Recipe, base: str) -> Any:
    """The base model with a fresh one-output score head, in the recipe's dtype and attention kernel."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from newt.models import local_snapshot

    return AutoModelForSequenceClassification.from_pretrained(
        str(local_snapshot(base)), num_labels=1, trust_remote_code=recipe.trust_remote_code,
        dtype=torch.bfloat16 if recipe.bf16 else torch.float32, attn_implementation=recipe.attn_implementation,
        use_safetensors=True,
    )


def reward_peft_config(recipe: Recipe) -> Any:
    """The recipe's LoRA settings for a sequence classifier: the `score` head trains in full (it starts random);
    `lm_head` is dropped from modules_to_save, since a classifier has none."""
    config = peft_config(recipe)
    if config is None:
        return None
    keep = [m for m in (config.modules_to_save or []) if m != "lm_head"]
    return dataclasses.replace(config, task_type="SEQ_CLS", modules_to_save=[*keep, "score"])


def main(argv: list[str] | None = None) -> None:
    # 1. config
    args = parse_args(__doc__, argv)
    recipe, output = args.recipe, args.output
    if recipe.adapter == "qlora":
        raise SystemExit("rl: reward trains with adapter: lora or a full fine-tune (adapter: null); qlora is not "
                         "supported for reward models yet")
    reporter = Reporter()
    track = tracking.start(recipe, args.recipe_name, args.stage_key, reporter.run_id)  # report_to + env
    set_seed(recipe.seed)  # before the model: the score head's initial weights come from this seed

    # 2. tokenizer, model, data (tokenized here: the evaluation scores the same ids)
    tokenizer = load_tokenizer(recipe.tokenizer_config or args.base_model, trust_remote_code=recipe.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_reward_model(recipe, args.base_model)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    rows = load_prepared(args.data, "train")
    train = rows.map(lambda r: {"chosen_ids": pair_ids(tokenizer, r["prompt"], r["chosen"]),
                                "rejected_ids": pair_ids(tokenizer, r["prompt"], r["rejected"])},
                     remove_columns=rows.column_names)
    train = train.filter(lambda r: max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= recipe.sequence_len)
    dropped = len(rows) - len(train)
    if len(train) == 0:
        raise SystemExit(f"rl: reward: all {len(rows)} pairs are longer than sequence_len {recipe.sequence_len}; "
                         "raise sequence_len")

    # 3. train
    from trl import RewardConfig, RewardTrainer

    config = RewardConfig(**training_kwargs(recipe, output, track), max_length=None)  # long pairs dropped above
    world = max(int(config.world_size), 1)
    pair_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train) / len(train)
    stream = StreamMetrics(reporter, pair_tokens * recipe.micro_batch_size * recipe.gradient_accumulation_steps * world)
    trainer = RewardTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                            peft_config=reward_peft_config(recipe), callbacks=[stream])
    tracking_callback.attach(track, trainer)
    checkpoint, resumed_from = resume_point(recipe, output)
    if checkpoint:
        reporter.log(f"resuming from {checkpoint} (step {resumed_from})")
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 4. save (rank 0)
    if trainer.is_world_process_zero():
        save_final(trainer, tokenizer, output, adapter=recipe.adapter is not None)
        metrics = final_metrics("reward", recipe, trainer, result, stream, len(train), resumed_from)
        metrics["pairs_dropped_too_long"] = dropped
        metrics["train_accuracy"] = next((r["accuracy"] for r in reversed(stream.history) if "accuracy" in r), None)
        metrics.update(track.links)  # where the tracker runs are (URL or folder)
        reporter.finish(output, metrics)
    reporter.close()


if __name__ == "__main__":
    main()
