"""Group Relative Policy Optimization with TRL's GRPOTrainer (`rl: grpo`), one file top to bottom.

    accelerate launch -m newt.train.grpo --recipe recipe.json --data <prepared folder> --output <folder>

Each prepared row has a chat-templated `prompt` plus the columns the reward functions read (e.g. `answer`;
newt/preference.py). For every prompt the policy samples `trl.num_generations` completions of at most
`trl.max_completion_length` tokens, the reward functions named in `trl.reward_funcs` (newt/rewards.py) score them,
and the advantage of each is its reward relative to its group. Generation is plain `generate` (CPU or GPU), or vLLM
colocated on the training GPU with `trl.use_vllm: true`.

Checkpoints go to `<output>/checkpoints` every `save_steps` and a relaunch resumes from the newest. Output:
`adapter/` or `model/` (with tokenizer), `metrics.json`.
"""

from __future__ import annotations

from transformers import set_seed

from newt import tracking, tracking_callback
from newt.models import load_tokenizer
from newt.prepare import load_prepared
from newt.rewards import resolve
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
    trl_cfg = recipe.trl
    rewards = [resolve(spec, max_completion_length=trl_cfg.max_completion_length) for spec in trl_cfg.reward_funcs]

    # 2. tokenizer, model, data
    tokenizer = load_tokenizer(recipe.tokenizer_config or args.base_model, trust_remote_code=recipe.trust_remote_code)
    model = load_base(recipe, args.base_model)
    model, new_ids = train_args.finish_model(recipe, tokenizer, model, reporter.log)  # issue 16: tokens, kernels
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues the prompt: pad on the left
    train = load_prepared(args.data, "train")

    # 3. train
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        **training_kwargs(recipe, output, track),
        beta=recipe.rl_beta,
        num_generations=trl_cfg.num_generations,
        max_completion_length=trl_cfg.max_completion_length,
        reward_weights=trl_cfg.reward_weights,
        use_vllm=trl_cfg.use_vllm,
        **({"vllm_mode": "colocate"} if trl_cfg.use_vllm else {}),
    )
    world = max(int(config.world_size), 1)
    sample = train.select(range(min(len(train), 64)))
    prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in sample["prompt"])
    prompt_tokens /= max(len(sample), 1)
    # Every row of a step is one sampled completion: prompt + up to max_completion_length tokens (an upper bound).
    per_step = (prompt_tokens + trl_cfg.max_completion_length) * recipe.micro_batch_size
    stream = StreamMetrics(reporter, per_step * recipe.gradient_accumulation_steps * world)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=train,
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
        metrics = final_metrics("grpo", recipe, trainer, result, stream, len(train), resumed_from)
        metrics["reward_funcs"] = list(trl_cfg.reward_funcs)
        metrics["num_generations"] = trl_cfg.num_generations
        metrics["reward_history"] = [row.get("reward") for row in stream.history]
        metrics.update(track.links)  # where the tracker runs are (URL or folder)
        reporter.finish(output, metrics)
    reporter.close()


if __name__ == "__main__":
    main()
