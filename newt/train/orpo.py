"""Paired preference tuning without a reference model, with TRL's experimental trainers, one file: ORPO
(`rl: orpo`, `orpo_alpha`), CPO (`rl: cpo`, `cpo_alpha`, `rl_beta`) and SimPO (`rl: simpo` = CPO's simpo loss,
`simpo_gamma`, `cpo_alpha` 0 unless set), as Axolotl runs them.

    accelerate launch -m newt.train.orpo --recipe recipe.json --data <prepared folder> --output <folder>

The prepared rows are DPO's: chat-templated `prompt`/`chosen`/`rejected` text (newt/preference.py). Checkpoints go
to `<output>/checkpoints` every `save_steps` and a relaunch resumes from the newest. Output: `adapter/` or `model/`
(with tokenizer), `metrics.json`.
"""

from __future__ import annotations

from typing import Any

from transformers import set_seed

from newt import tracking, tracking_callback
from newt.config import Recipe
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


def method_kwargs(recipe: Recipe) -> tuple[Any, Any, dict[str, Any]]:
    """(config class, trainer class, the method's own config keywords) for the recipe's rl."""
    if recipe.rl == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        # Axolotl passes orpo_alpha as ORPO's beta (the weight of the odds-ratio term); TRL's default otherwise
        beta = {"beta": recipe.orpo_alpha} if recipe.orpo_alpha is not None else {}
        return ORPOConfig, ORPOTrainer, {**beta, "max_length": recipe.sequence_len}
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    kwargs: dict[str, Any] = {"beta": recipe.rl_beta, "max_length": recipe.sequence_len}
    if recipe.rl == "simpo":
        kwargs["loss_type"] = "simpo"
        kwargs["cpo_alpha"] = recipe.cpo_alpha if recipe.cpo_alpha is not None else 0.0  # SimPO has no NLL term
        if recipe.simpo_gamma is not None:
            kwargs["simpo_gamma"] = recipe.simpo_gamma
    elif recipe.cpo_alpha is not None:
        kwargs["cpo_alpha"] = recipe.cpo_alpha
    return CPOConfig, CPOTrainer, kwargs


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
    model, new_ids = train_args.finish_model(recipe, tokenizer, model, reporter.log)  # tokens, kernels
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = load_prepared(args.data, "train")

    # 3. train
    Config, Trainer, kwargs = method_kwargs(recipe)
    eval_split = train_args.held_out(recipe, args.data)  # evals_per_epoch / eval_steps
    config = Config(**training_kwargs(recipe, output, track, has_eval=eval_split is not None), **kwargs)
    world = max(int(config.world_size), 1)
    sample = train.select(range(min(len(train), 64)))
    row_tokens = sum(len(tokenizer(r[c], add_special_tokens=False)["input_ids"]) for r in sample
                     for c in ("prompt", "chosen", "rejected")) / max(len(sample), 1)
    stream = StreamMetrics(reporter, row_tokens * recipe.micro_batch_size * recipe.gradient_accumulation_steps * world)
    trainer = Trainer(model=model, args=config, train_dataset=train, eval_dataset=eval_split, processing_class=tokenizer,
                      peft_config=peft_config(recipe, model, new_ids), callbacks=[stream, *train_args.callbacks(recipe)])
    tracking_callback.attach(track, trainer)
    checkpoint, resumed_from = resume_point(recipe, output)
    if checkpoint:
        reporter.log(f"resuming from {checkpoint} (step {resumed_from})")
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 4. save (rank 0)
    if trainer.is_world_process_zero():
        save_final(trainer, tokenizer, output, adapter=recipe.adapter is not None)
        metrics = final_metrics(recipe.rl or "orpo", recipe, trainer, result, stream, len(train), resumed_from)
        metrics.update({k: v for k, v in kwargs.items() if k != "max_length"})
        metrics.update(track.links)  # where the tracker runs are (URL or folder)
        reporter.finish(output, metrics)
    reporter.close()


if __name__ == "__main__":
    main()
