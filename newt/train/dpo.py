"""Preference tuning with TRL: DPO (`rl: dpo`, any of TRL's `dpo_loss_type`s) or KTO (`rl: kto`), one file.

    accelerate launch -m newt.train.dpo --recipe recipe.json --data <prepared folder> --output <folder>

The prepared rows are chat-templated text (newt/preference.py): `prompt`/`chosen`/`rejected` for DPO,
`prompt`/`completion`/`label` for KTO. With an adapter (LoRA/QLoRA) the reference model is the base with the
adapter switched off, so no second copy is loaded; a full fine-tune loads a frozen reference copy.

Checkpoints go to `<output>/checkpoints` every `save_steps` and a relaunch resumes from the newest. Output:
`adapter/` or `model/` (with tokenizer), `metrics.json`.
"""

from __future__ import annotations

from transformers import set_seed

from newt import tracking, tracking_callback
from newt.models import load_tokenizer
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
from newt.train.report import Reporter
from newt.train.resume import resume_point


def main(argv: list[str] | None = None) -> None:
    # 1. config
    args = parse_args(__doc__, argv)
    recipe, output = args.recipe, args.output
    reporter = Reporter()
    track = tracking.start(recipe, args.recipe_name, args.stage_key, reporter.run_id)  # report_to + env
    set_seed(recipe.seed)

    # 2. tokenizer, model, data
    tokenizer = load_tokenizer(recipe.tokenizer_config or args.base_model, trust_remote_code=recipe.trust_remote_code)
    model = load_base(recipe, args.base_model)
    model, new_ids = train_args.finish_model(recipe, tokenizer, model, reporter.log)  # issue 16: tokens, kernels
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = load_prepared(args.data, "train")

    # 3. train
    if recipe.rl == "kto":
        from trl import KTOConfig as Config
        from trl import KTOTrainer as Trainer

        method_kwargs = {"beta": recipe.rl_beta, "max_length": recipe.sequence_len,
                         "desirable_weight": recipe.kto_desirable_weight,
                         "undesirable_weight": recipe.kto_undesirable_weight}
        text_columns = ("prompt", "completion")
    else:
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        method_kwargs = {"beta": recipe.rl_beta, "loss_type": list(recipe.dpo_loss_type),
                         "max_length": recipe.sequence_len}
        text_columns = ("prompt", "chosen", "rejected")
    eval_split = train_args.held_out(recipe, args.data)  # evals_per_epoch / eval_steps
    config = Config(**training_kwargs(recipe, output, track, has_eval=eval_split is not None), **method_kwargs)
    world = max(int(config.world_size), 1)
    # Tokens per row ≈ the prompt plus each completion, measured on the text the trainer will tokenize.
    sample = train.select(range(min(len(train), 64)))
    row_tokens = sum(len(tokenizer(r[c], add_special_tokens=False)["input_ids"]) for r in sample for c in text_columns)
    row_tokens /= max(len(sample), 1)
    stream = StreamMetrics(reporter, row_tokens * recipe.micro_batch_size * recipe.gradient_accumulation_steps * world)
    trainer = Trainer(model=model, args=config, train_dataset=train, eval_dataset=eval_split,
                      processing_class=tokenizer, peft_config=peft_config(recipe, model, new_ids),
                      callbacks=[stream, *train_args.callbacks(recipe)])
    tracking_callback.attach(track, trainer)
    checkpoint, resumed_from = resume_point(recipe, output)
    if checkpoint:
        reporter.log(f"resuming from {checkpoint} (step {resumed_from})")
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 4. save (rank 0)
    if trainer.is_world_process_zero():
        save_final(trainer, tokenizer, output, adapter=recipe.adapter is not None)
        metrics = final_metrics(recipe.rl or "dpo", recipe, trainer, result, stream, len(train), resumed_from)
        metrics["rl_beta"] = recipe.rl_beta
        if recipe.rl == "dpo":
            metrics["dpo_loss_type"] = list(recipe.dpo_loss_type)
        else:  # the KTO weights the trainer ran with (kto_desirable_weight / kto_undesirable_weight)
            metrics.update(desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)
        metrics.update(track.links)  # where the tracker runs are (URL or folder)
        reporter.finish(output, metrics)
    reporter.close()


if __name__ == "__main__":
    main()
