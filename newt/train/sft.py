"""Supervised fine-tuning (full, LoRA or QLoRA) with TRL's SFTTrainer, one file top to bottom.

    accelerate launch -m newt.train.sft --recipe recipe.json --data <prepared folder> --output <folder>

It runs with or without Dagster: the `trained` asset launches it through Dagster Pipes, anyone can launch it by
hand on a resolved recipe (JSON or YAML) and a `prepared` artifact folder. Labels come from the prepared data as
they are (newt's masking engine decided them); TRL only pads them.

A multimodal recipe (`processor_type`) trains the same way: the prepared rows carry their images as encoded bytes
next to the already expanded and labelled ids, and `VisionCollator` turns them into pixels with the processor's image
processor at batch time (pixels are far larger than the image files, so they are never stored); see
newt/train/collate.py for what each family's forward gets.

Checkpoints go to `<output>/checkpoints` every `save_steps`; launched again on the same output folder after a crash,
it resumes from the newest one. Output: `adapter/` (LoRA adapter + tokenizer) or `model/` (full weights +
tokenizer), `metrics.json`.
"""

from __future__ import annotations

import pyarrow.compute as pc
import torch
from transformers import set_seed

from newt import IGNORE_INDEX
from newt import tracking, tracking_callback
from newt.models import load_processor, load_tokenizer
from newt.train.packed import BinCollator, varlen_kernel
from newt.prepare import load_prepared
from newt.train.child import (
    StreamMetrics,
    final_metrics,
    load_base,
    parse_args,
    peft_config,
    save_final,
    training_kwargs,
)
import newt.train.args as train_args
from newt.train.collate import VisionCollator  # multimodal batches from the processor's own outputs
from newt.train.report import Reporter
from newt.train.resume import resume_point


def main(argv: list[str] | None = None) -> None:
    # 1. config
    args = parse_args(__doc__, argv)
    recipe, output = args.recipe, args.output
    reporter = Reporter()
    track = tracking.start(recipe, args.recipe_name, args.stage_key, reporter.run_id)  # report_to + env
    set_seed(recipe.seed)

    # 2. tokenizer (or multimodal processor), model, data
    source = recipe.tokenizer_config or args.base_model
    if recipe.processor_type:
        tokenizer = load_processor(source, recipe.processor_type, trust_remote_code=recipe.trust_remote_code)
    else:
        tokenizer = load_tokenizer(source, trust_remote_code=recipe.trust_remote_code)
    model = load_base(recipe, args.base_model)
    model, new_ids = train_args.finish_model(recipe, tokenizer, model, reporter.log)  # issue 16: tokens, kernels
    # A packed split (sample_packing) carries TRL's `seq_lengths`: position ids restart per example.
    columns = ["input_ids", "labels", "seq_lengths"] if recipe.sample_packing else ["input_ids", "labels"]
    if recipe.processor_type:
        columns.append("images")
    train = load_prepared(args.data, "train").select_columns(columns)

    # 3. train
    from trl import SFTConfig, SFTTrainer

    eval_split = train_args.held_out(recipe, args.data, columns)  # evals_per_epoch / eval_steps
    config = SFTConfig(
        **training_kwargs(recipe, output, track, has_eval=eval_split is not None),
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are already tokenized and labelled by newt
        # Packed rows, no attention across examples (newt/packing.py): flash-attn takes TRL's padding-free batches
        # (one row, varlen kernel); other kernels take BinCollator's one row per bin.
        **({"padding_free": varlen_kernel(recipe.attn_implementation), "max_length": None}
           if recipe.sample_packing else {}),
        # Multimodal: keep the `images` column for VisionCollator (the model's forward does not name it).
        **({"remove_unused_columns": False} if recipe.processor_type else {}),
    )
    world = max(int(config.world_size), 1)
    # Lengths from the Arrow column itself: no Python list of every row (seconds on large data).
    lengths = pc.list_value_length(train.with_format("arrow")["input_ids"])
    mean_len = float(pc.sum(lengths).as_py() or 0) / max(len(train), 1)
    stream = StreamMetrics(reporter, mean_len * recipe.micro_batch_size * recipe.gradient_accumulation_steps * world)
    # None: TRL pads ids and labels. Multimodal: media cast to the model's dtype.
    collator = VisionCollator(tokenizer, model.dtype) if recipe.processor_type else None
    if recipe.sample_packing and not varlen_kernel(recipe.attn_implementation):
        collator = BinCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        stream.count_tokens = collator.real_tokens
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=eval_split,
                         processing_class=tokenizer, data_collator=collator,
                         peft_config=peft_config(recipe, model, new_ids), callbacks=[stream, *train_args.callbacks(recipe)])
    tracking_callback.attach(track, trainer)
    checkpoint, resumed_from = resume_point(recipe, output)
    if checkpoint:
        reporter.log(f"resuming from {checkpoint} (step {resumed_from})")
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 4. save (rank 0)
    if trainer.is_world_process_zero():
        save_final(trainer, tokenizer, output, adapter=recipe.adapter is not None)
        metrics = final_metrics("sft", recipe, trainer, result, stream, len(train), resumed_from)
        metrics["cuda"] = torch.cuda.is_available()
        metrics.update(track.links)  # where the tracker runs are (URL or folder)
        reporter.finish(output, metrics)
    reporter.close()


if __name__ == "__main__":
    main()
