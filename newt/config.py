"""The recipe schema: one typed model, strict, with the stages each field affects.

Key names follow Axolotl where Axolotl has the concept, so an Axolotl user reads a newt recipe without a glossary.
Every field carries `stages` in its schema extra: the list of pipeline stages whose output it determines. The cache
derives each stage's key from exactly those fields (`stage_fields`), so the list is never kept by hand elsewhere.
A field tagged with no stage changes behaviour that is not part of an artifact (logging, gates).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from newt import STAGES
from newt.recipe_problems import describe_errors, drop_unset, inner_model, key_path  # noqa: F401 (re-exported)
from newt.spelling import close_match  # noqa: F401 (re-exported: one suggestion rule for every name)


def knob(default: Any, description: str, *stages: str, **kwargs: Any) -> Any:
    """A schema field with its one-line description and the stages whose output it determines."""
    unknown = set(stages) - set(STAGES)
    assert not unknown, f"unknown stage tags {unknown}"
    return Field(default, description=description, json_schema_extra={"stages": list(stages)}, **kwargs)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


TrainOnEos = Literal["turn", "all", "last", "none"]
# transformers' attention implementations by name (a hub kernel `org/name` is the other accepted form)
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


class RoleBoundarySpec(Strict):
    """One role's turn markers, as literal strings the tokenizer encodes (masking engine override)."""

    role: str = knob(..., "Role name this boundary delimits (as used in `roles_to_train`).", "prepared")
    start: str = knob(..., "Literal text that opens a turn of this role.", "prepared")
    end: str | None = knob(
        "eos_token",
        "Literal text that closes the turn; `eos_token` means the tokenizer's EOS; null runs to the end of the row.",
        "prepared",
    )
    include_start: bool = knob(False, "Train the start marker too.", "prepared")
    include_end: bool = knob(True, "Whether the end marker may be trained (as `train_on_eos` decides).", "prepared")


class DatasetSpec(Strict):
    """One data source and how its rows become conversations."""

    # issue 13: no stage tag. Keys hold the source's content version instead (newt.sources.identity), so the same
    # bytes under another spelling or folder hit every stage.
    path: str = knob(..., "Local file/folder, fsspec URL (s3://, gs://, az://, https://) or hub dataset name.")
    type: Literal["chat_template", "alpaca", "completion", "input_output"] = knob(
        "chat_template",
        "Row format (docs/data-formats.md): `chat_template` = a list of messages per row (OpenAI or ShareGPT), "
        "`alpaca` = instruction/input/output, `completion` = raw text trained fully, `input_output` = text "
        "segments with per-segment train flags.",
        "prepared",
    )
    split: str = knob("train", "Split to read.", "dataset")
    data_files: str | list[str] | None = knob(None, "Files inside `path` to read (glob or list).", "dataset")
    name: str | None = knob(None, "Hub dataset configuration name.", "dataset")
    ds_type: Literal["json", "jsonl", "parquet", "csv", "arrow"] | None = knob(
        None, "File format when the extension does not say it.", "dataset"
    )
    storage_options: dict[str, Any] = knob(
        {},
        "fsspec options (endpoint_url, key, secret, anon, ...); use ${env:NAME} for secrets. Not part of any key: "
        "the data's content version is.",
    )
    field_messages: str = knob("messages", "Column holding the list of messages.", "prepared")
    message_property_mappings: dict[str, str] = knob(
        {"role": "role", "content": "content"},
        "Which keys of a message hold its role and content, e.g. {role: from, content: value} for ShareGPT.",
        "prepared",
    )
    roles: dict[str, list[str]] | None = knob(
        None,
        "Role names in the data mapped to template roles, e.g. {user: [customer], assistant: [agent]}. They extend "
        "the defaults, which always map ShareGPT's human/gpt and the OpenAI names (user, assistant, system, tool).",
        "prepared",
    )
    field_instruction: str = knob("instruction", "`alpaca`: column with the instruction (user turn).", "prepared")
    field_input: str = knob("input", "`alpaca`: optional column appended to the instruction.", "prepared")
    field_output: str = knob("output", "`alpaca`: column with the answer (assistant turn).", "prepared")
    field: str = knob("text", "`completion`: column with the raw text.", "prepared")
    field_segments: str = knob(
        "segments", "`input_output`: column with the list of {text, label} segments (label true = trained).",
        "prepared",
    )
    roles_to_train: list[str] | None = knob(None, "Overrides the recipe's `roles_to_train` for this dataset.", "prepared")
    train_on_eos: TrainOnEos | None = knob(None, "Overrides the recipe's `train_on_eos` for this dataset.", "prepared")


class MergeConfig(Strict):
    dtype: Literal["float32", "bfloat16", "float16"] = knob(
        "float32", "Dtype the merged weights are saved in.", "merged"
    )


QuantizeMethod = Literal["int8_weight_only", "int4_weight_only", "bnb_8bit", "bnb_4bit", "gguf_f16", "gguf_q8_0"]


class QuantizeConfig(Strict):
    outputs: list[QuantizeMethod] = knob(
        ["int8_weight_only"],
        "Quantized/exported models built from the merged model, each its own cached asset: the first is "
        "`<recipe>/quantized`, each further one `<recipe>/quantized_<method>`.",
        "quantized", min_length=1,
    )

    @field_validator("outputs")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        twice = sorted({m for m in value if value.count(m) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once; list each method once")
        return value

    def variants(self) -> dict[str, str]:
        """{variant (= asset) name: method}: the first output is `quantized`, each further `quantized_<method>`."""
        return {("quantized" if i == 0 else f"quantized_{m}"): m for i, m in enumerate(self.outputs)}


# Built-in metrics and their direction: "min" = higher is better (a threshold is a minimum), "max" = lower is better.
EVAL_METRICS = {"exact_match": "min", "contains": "min", "regex_match": "min", "loss": "max", "perplexity": "max"}
# issue 17: preference (newt/eval/preference.py) and GRPO (newt/eval/grpo.py) metrics; "min" = a floor, higher is better
EVAL_METRICS |= {"preference_accuracy": "min", "reward_margin": "min", "chosen_logp": "min", "rejected_logp": "max",
                 "reward": "min", "stopped": "min"}
# issue 18: reward models (newt/eval/reward.py): share of held-out pairs scored chosen > rejected, mean score gap
EVAL_METRICS |= {"pairwise_accuracy": "min", "reward_margin": "min"}
_LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_byte")


def metric_direction(name: str) -> Literal["min", "max"]:
    """Built-in metrics by table; lm-eval metrics (`<task>/<metric>`) are higher-is-better unless a loss or
    perplexity (lm-eval's own `higher_is_better` agrees for the metrics it ships)."""
    if name in EVAL_METRICS:
        return EVAL_METRICS[name]  # type: ignore[return-value]
    return "max" if name.rsplit("/", 1)[-1].endswith(_LOWER_IS_BETTER) else "min"


class EvalConfig(Strict):
    max_samples: int = knob(200, "Held-out rows scored (the first N of the validation split).", "evaluation", ge=1)
    max_new_tokens: int = knob(32, "Generation budget per held-out prompt.", "evaluation", ge=1)
    models: list[str] = knob(
        ["base", "merged", "quantized"],
        "Model variants to evaluate: `base`, `merged`, `quantized` (the first quantize output) and "
        "`quantized_<method>` (a further output).",
        "evaluation", min_length=1,
    )
    answer_regex: str | None = knob(
        None,
        "Regex searched in each generated answer; its first match (group 1 when the pattern has groups) is "
        "compared with the reference answer, giving the metric `regex_match`.",
        "evaluation",
    )
    lm_eval_tasks: list[str] = knob(
        [], "lm-evaluation-harness tasks run on each variant: local YAML tasks from `lm_eval_include_path`, or "
        "standard task names whose data is available offline. Metrics are named `<task>/<metric>`.", "evaluation",
    )
    lm_eval_include_path: str | None = knob(
        None, "Folder of local lm-eval task YAML files (offline: `dataset_path: json` with local data_files); "
        "its files' content is part of the evaluation key.", "evaluation",
    )
    lm_eval_limit: int | None = knob(None, "Documents per lm-eval task (null: all).", "evaluation", ge=1)
    thresholds: dict[str, float] = knob(
        {},
        "Absolute gates on the fine-tuned variants: metrics where higher is better (exact_match, contains, "
        "regex_match, most lm-eval metrics) need at least the value, loss and perplexity at most. "
        "Checked on every materialization; not part of the key.",
    )
    max_drop: dict[str, float] = knob(
        {},
        "No-regression gate: the largest allowed worsening of each metric of each fine-tuned variant against "
        "`baseline`, in the metric's own units (exact_match: 0.05 = five points). Not part of the key.",
    )
    baseline: str = knob(
        "previous",
        "What `max_drop` compares with: `previous` (this evaluation asset's last materialization; passes when "
        "there is none), `base` (the base model in the same run), or a path to a JSON file of metrics "
        "(`{variant: {metric: value}}`, or `{metric: value}` for every variant). Not part of the key.",
    )
    min_retention: dict[str, float] = knob(
        {},
        "Quantized-vs-merged gate: each quantized variant keeps at least this share of the merged model's metric "
        "(quantized/merged; merged/quantized for loss and perplexity, so 0.95 always means 'at most 5% worse'). "
        "Not part of the key.",
    )

    # issue 17: text formats are not scored by generation unless asked
    generate: bool | None = knob(
        None,
        "Score one greedy generation per held-out row against its last turn (exact_match, contains, regex_match). "
        "null: on for chat formats, off when every dataset is a text format (completion, input_output), whose "
        "evaluation is loss and perplexity.",
        "evaluation",
    )

    @model_validator(mode="after")
    def _known_metrics(self) -> EvalConfig:
        known = list(EVAL_METRICS)
        problems = []
        for gate in ("thresholds", "max_drop", "min_retention"):
            for name in getattr(self, gate):
                task = name.split("/", 1)[0] if "/" in name else None
                if name in EVAL_METRICS or (task is not None and task in self.lm_eval_tasks):
                    continue
                hint = difflib.get_close_matches(name, known, n=1)
                problems.append(
                    f"eval.{gate}: unknown metric {name!r}; known metrics: {', '.join(known)}, or "
                    "<task>/<metric> for a task in eval.lm_eval_tasks" + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                problems.append(f"eval.answer_regex: {self.answer_regex!r} is not a valid regex ({exc})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrlConfig(Strict):
    """GRPO settings, named as in Axolotl's `trl:` section."""

    num_generations: int = knob(4, "Completions sampled per prompt (GRPO group size).", "trained", ge=2)
    max_completion_length: int = knob(64, "Token budget of each sampled completion.", "trained", ge=1)
    reward_funcs: list[str] = knob(
        ["exact_match"],
        "Reward functions: built-ins (exact_match, format, length), a dotted path `pkg.module.func`, or "
        "`path/to/file.py:func`.", "trained", min_length=1,
    )
    reward_weights: list[float] | None = knob(None, "Weight of each reward function (default: all 1).", "trained")
    use_vllm: bool = knob(False, "Generate with vLLM (GPU only, colocated); plain `generate` otherwise.", "trained")

    @model_validator(mode="after")
    def _weights_match(self) -> TrlConfig:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries but reward_funcs has "
                             f"{len(self.reward_funcs)}; give one weight per reward function")
        return self


class SpecialTokens(Strict):
    """Axolotl's `special_tokens`: each set one replaces the tokenizer's (added to the vocabulary when new)."""

    bos_token: str | None = knob(None, "Beginning-of-sequence token.", "prepared", "trained")
    eos_token: str | None = knob(None, "End-of-sequence token.", "prepared", "trained")
    pad_token: str | None = knob(None, "Padding token.", "prepared", "trained")
    unk_token: str | None = knob(None, "Unknown-text token.", "prepared", "trained")
    additional_special_tokens: list[str] = knob([], "Further special tokens added.", "prepared", "trained")


class Recipe(Strict):
    """A fine-tuning recipe: one YAML file, one asset group."""

    base_model: str = knob(
        ..., "Hub name, local path, or `builtin:tiny-llama` (built offline, deterministic).", "prepared", "trained"
    )
    tokenizer_config: str | None = knob(None, "Tokenizer to use instead of the base model's (hub name or path).", "prepared")
    processor_type: str | None = knob(
        None,
        "Multimodal rows: `AutoProcessor` (or a transformers processor class name) loads the base model's "
        "processor; images in messages or an `images` column are expanded into media tokens and masked.",
        "prepared", "trained",
    )
    trust_remote_code: bool = knob(False, "Allow code from the model repo to run. Keep false unless you trust it.",
                                   "prepared", "trained")
    datasets: list[DatasetSpec] = knob(..., "Training data sources, merged in order.", "dataset", "prepared",
                                       min_length=1)
    chat_template: str = knob(
        "tokenizer_default",
        "`tokenizer_default` (the tokenizer's own), `jinja` (use chat_template_jinja), or a template name shipped "
        "with TRL (e.g. `qwen2_5`, `llama3`).",
        "prepared",
    )
    chat_template_jinja: str | None = knob(None, "Jinja template text, or a path to a .jinja file.", "prepared")
    train_on_inputs: bool = knob(False, "Train on every token except pad/media, not just the trained roles.", "prepared")
    roles_to_train: list[str] = knob(["assistant"], "Roles whose content is trained.", "prepared", min_length=1)
    train_on_eos: TrainOnEos = knob("turn", "Which turn end markers are trained: turn, all, last or none.", "prepared")
    role_boundaries: list[RoleBoundarySpec] = knob(
        [], "Replaces the built-in/derived role markers wholesale when non-empty.", "prepared"
    )
    sequence_len: int = knob(2048, "Maximum tokens per row.", "prepared", ge=8)
    excess_length_strategy: Literal["truncate", "drop"] = knob(
        "truncate", "Rows longer than sequence_len: cut to length, or drop the row.", "prepared"
    )
    val_set_size: float = knob(
        0.0, "Held-out share of rows (< 1) or row count (>= 1) for evaluation.", "prepared", ge=0
    )
    seed: int = knob(42, "Seed for the split, shuffling and training.", "prepared", "trained")
    shuffle_merged_datasets: bool = knob(
        True, "Shuffle the merged rows by `seed` before the split; false keeps the order of `datasets`.", "prepared"
    )
    dataset_exact_deduplication: bool = knob(
        False, "Drop rows whose tokens and labels repeat an earlier row's (first occurrence kept).", "prepared"
    )
    sample_packing: bool = knob(
        False,
        "Pack training rows into sequence_len bins without attention across examples (position ids restart "
        "per example); validation rows stay unpacked.",
        "prepared", "trained",
    )
    dataset_num_proc: int | None = knob(
        None, "Processes for tokenizing and masking; null uses every core. Output is identical for any value.",
        ge=1,
    )
    allow_zero_supervision_rows: bool = knob(
        False,
        "Drop (and count) rows that have no supervised token as written, instead of failing the stage. Rows "
        "that lose all supervision to truncation are always dropped and counted.",
    )
    mask_audit_max_failure_rate: float = knob(
        0.0, "The prepared stage fails when more audited rows than this share supervise the wrong text.", ge=0, le=1
    )

    adapter: Literal["lora", "qlora"] | None = knob(
        "lora", "`lora`, `qlora` (LoRA on a bitsandbytes 4-bit base), or null for a full fine-tune.", "trained"
    )
    lora_r: int = knob(8, "LoRA rank.", "trained", ge=1)
    lora_alpha: int = knob(16, "LoRA scaling numerator.", "trained", ge=1)
    lora_dropout: float = knob(0.0, "Dropout on the LoRA path.", "trained", ge=0, le=1)
    lora_target_modules: list[str] | str = knob(
        "all-linear",
        "Module names LoRA wraps (a list), `all-linear`, or a regex matched against each full module name (PEFT's "
        "string form, as in Axolotl).", "trained",
    )
    lora_modules_to_save: list[str] = knob(
        [], "Modules trained in full next to the adapter (e.g. embed_tokens, lm_head).", "trained"
    )
    micro_batch_size: int = knob(1, "Rows per device per step.", "trained", ge=1)
    gradient_accumulation_steps: int = knob(1, "Micro-batches per optimizer step.", "trained", ge=1)
    num_epochs: float = knob(1.0, "Passes over the training split (ignored when max_steps is set).", "trained", gt=0)
    max_steps: int | None = knob(None, "Optimizer steps; overrides num_epochs.", "trained", ge=1)
    learning_rate: float = knob(2e-4, "Peak learning rate.", "trained", gt=0)
    lr_scheduler: str = knob(
        "cosine", "Learning-rate schedule: any name of transformers' `SchedulerType` (cosine, linear, constant, "
        "constant_with_warmup, cosine_with_min_lr, warmup_stable_decay, ...).", "trained"
    )
    warmup_steps: int = knob(0, "Linear warm-up steps.", "trained", ge=0)
    optimizer: str = knob(
        "adamw_torch",
        "Optimizer: any name of transformers' `OptimizerNames` (8-bit and paged ones need bitsandbytes and a GPU).",
        "trained",
    )
    weight_decay: float = knob(0.0, "Decoupled weight decay.", "trained", ge=0)
    logging_steps: int = knob(10, "Steps between metric reports to the run log (not part of any key).", ge=1)
    save_steps: int = knob(  # issue 13: cadence only, no stage tag: checkpoints never change the weights
        50, "Steps between checkpoints in the stage's work folder; a crashed run resumes from the last one "
        "(not part of any key).", ge=1,
    )

    # method (docs/training.md). Names follow Axolotl: rl, rl_beta, trl.{num_generations, ...}.
    rl: Literal["dpo", "kto", "grpo", "orpo", "simpo", "cpo", "reward"] | None = knob(
        None, "Preference/RL method: `dpo`, `kto` or `grpo` (TRL's stable trainers), `orpo`, `cpo` or `simpo` (TRL's "
        "experimental ORPO and CPO trainers; SimPO is CPO's simpo loss), `reward` (a reward model: "
        "sequence-classification head trained on chosen/rejected pairs); null = supervised fine-tuning.",
        "prepared", "trained",
    )
    rl_beta: float = knob(0.1, "DPO/KTO/GRPO beta: strength of the pull towards the reference model.", "trained", ge=0)
    dpo_loss_type: list[str] = knob(
        ["sigmoid"], "TRL DPO loss type(s), e.g. sigmoid, ipo, hinge, robust, apo_zero (several are summed).",
        "trained", min_length=1,
    )
    trl: TrlConfig = knob(TrlConfig(), "GRPO settings (Axolotl's `trl:` section).", "trained")

    # hardware and launch (docs/training.md, docs/gpu.md)
    num_processes: int = knob(1, "Training processes (one per GPU; gloo processes on CPU).", "trained", ge=1)
    accelerate_config: str | None = knob(
        None, "Accelerate preset shipped with newt (single_gpu, multi_gpu, fsdp, deepspeed_zero2, deepspeed_zero3) "
        "or a path to your own accelerate config YAML.", "trained",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = knob(
        "no", "Autocast precision for training (accelerate's --mixed_precision).", "trained"
    )
    bf16: bool | Literal["auto"] = knob(
        False, "Load the base weights in bfloat16 (pure bf16 training; QLoRA compute dtype); `auto` = bf16 where the "
        "GPU supports it, float32 elsewhere (Axolotl's default).", "trained",
    )
    tf32: bool = knob(False, "Allow TF32 matmuls (Ampere or newer GPUs only).", "trained")
    attn_implementation: str = knob(
        "sdpa", "Attention kernel: eager, sdpa, flash_attention_2, flash_attention_3, flex_attention, or a hub kernel "
        "`org/name` (transformers' kernels); flash attention and hub kernels need the `gpu` extra "
        "(pip install 'newt[gpu]').", "trained",
    )
    gradient_checkpointing: bool = knob(False, "Recompute activations in the backward pass to save memory.", "trained")
    torch_compile: bool = knob(False, "Compile the model with torch.compile.", "trained")
    schedule: str | None = knob(
        None,
        "Cron expression (UTC) for scheduled retraining, e.g. `0 3 * * 1`; each tick materializes the recipe's "
        "stale or missing stages (unchanged stages are cache hits). Not part of any key.",
    )

    merge: MergeConfig = knob(MergeConfig(), "Merge stage settings.", "merged")
    quantize: QuantizeConfig = knob(QuantizeConfig(), "Quantize stage settings.", "quantized")
    eval: EvalConfig = knob(EvalConfig(), "Evaluation stage settings and gates.", "evaluation")

    # issue 16: Axolotl keys (docs/migrating-from-axolotl.md; newt/axolotl/ translates the Axolotl-only spellings)
    warmup_ratio: float | None = knob(
        None, "Warm-up as a share of all training steps (instead of warmup_steps).", "trained", ge=0, lt=1
    )
    saves_per_epoch: int | None = knob(None, "Checkpoints per epoch (instead of save_steps).", ge=1)
    save_total_limit: int | None = knob(None, "Checkpoints kept in the work folder (the newest ones).", ge=1)
    evals_per_epoch: int | None = knob(
        None, "Evaluations of the held-out split (val_set_size) per epoch during training; its loss is logged "
        "as eval_loss beside the training loss. With val_set_size 0 there is nothing to evaluate (as in Axolotl).",
        ge=1,
    )
    eval_steps: int | None = knob(None, "Steps between evaluations of the held-out split during training.", ge=1)
    max_grad_norm: float | None = knob(None, "Gradient clipping norm (null: TRL's default, 1.0).", "trained", ge=0)
    adam_beta1: float | None = knob(None, "Adam beta1 (null: the optimizer's default).", "trained", ge=0, lt=1)
    adam_beta2: float | None = knob(None, "Adam beta2 (null: the optimizer's default).", "trained", ge=0, lt=1)
    adam_epsilon: float | None = knob(None, "Adam epsilon (null: the optimizer's default).", "trained", gt=0)
    cosine_min_lr_ratio: float | None = knob(
        None, "Cosine schedule floor as a share of learning_rate (transformers' cosine_with_min_lr).", "trained",
        ge=0, le=1,
    )
    lr_scheduler_kwargs: dict[str, Any] = knob({}, "Extra arguments of the learning-rate schedule.", "trained")
    neftune_noise_alpha: float | None = knob(None, "NEFTune embedding noise (null: off).", "trained", gt=0)
    gradient_checkpointing_kwargs: dict[str, Any] | None = knob(
        None, "Arguments of gradient checkpointing, e.g. {use_reentrant: false}; memory/speed only.",
    )
    lora_target_linear: bool | None = knob(
        None, "Wrap every linear layer (except the output head) with LoRA, plus any lora_target_modules listed.",
        "trained",
    )
    lora_fan_in_fan_out: bool = knob(False, "LoRA on GPT-2-style Conv1D layers (weights stored transposed).",
                                     "trained")
    peft_use_dora: bool = knob(False, "DoRA: weight-decomposed LoRA.", "trained")
    peft_use_rslora: bool = knob(False, "rsLoRA: scale by alpha/sqrt(r) instead of alpha/r.", "trained")
    load_in_8bit: bool = knob(False, "LoRA on a bitsandbytes 8-bit base (CUDA + bitsandbytes).", "trained")
    special_tokens: SpecialTokens = knob(
        SpecialTokens(), "Special tokens set on the tokenizer (added when new; embeddings resized, new rows "
        "trained).", "prepared", "trained",
    )
    tokens: list[str] = knob([], "Tokens added to the vocabulary (embeddings resized, new rows trained).",
                             "prepared", "trained")
    eot_tokens: list[str] = knob(
        [], "End-of-turn tokens: added as special tokens when new; the prepared stage checks that each trained "
        "role's turn end in masking (the marker `train_on_eos` decides about) is one of them.", "prepared", "trained",
    )
    deepspeed: str | None = knob(
        None, "DeepSpeed config: a JSON file, a newt preset (deepspeed_zero2, deepspeed_zero3), or an Axolotl "
        "`deepspeed_configs/zeroN*.json` name (read as the preset of that stage when the file is absent).", "trained",
    )
    fsdp: list[str] | str | None = knob(
        None, "FSDP options as in transformers (`full_shard auto_wrap`, `offload`); turned into the accelerate "
        "config of the training child.", "trained",
    )
    fsdp_config: dict[str, Any] = knob(
        {}, "FSDP settings (Axolotl's names with or without the `fsdp_` prefix: version, auto_wrap_policy, "
        "transformer_layer_cls_to_wrap, state_dict_type, offload_params, reshard_after_forward, "
        "activation_checkpointing, cpu_ram_efficient_loading, sharding_strategy).", "trained",
    )
    fsdp_version: int | None = knob(None, "FSDP version (1 or 2; newt's default is 2).", "trained", ge=1, le=2)
    plugins: list[str] = knob(
        [], "Axolotl plugins: the Liger and Cut Cross Entropy ones are applied where the `gpu` extra is installed "
        "(CUDA); elsewhere training logs what it skipped. Others are refused.", "trained",
    )
    liger_rope: bool = knob(False, "Liger RoPE kernel (gpu extra).", "trained")
    liger_rms_norm: bool = knob(False, "Liger RMSNorm kernel (gpu extra).", "trained")
    liger_layer_norm: bool = knob(False, "Liger LayerNorm kernel (gpu extra).", "trained")
    liger_glu_activation: bool = knob(False, "Liger SwiGLU/GeGLU kernel (gpu extra).", "trained")
    liger_cross_entropy: bool = knob(False, "Liger cross-entropy kernel (gpu extra).", "trained")
    liger_fused_linear_cross_entropy: bool = knob(False, "Liger fused linear cross-entropy (gpu extra).", "trained")
    cut_cross_entropy: bool = knob(False, "Apple's Cut Cross Entropy loss (gpu extra).", "trained")
    orpo_alpha: float | None = knob(None, "ORPO: weight of the odds-ratio loss (TRL's beta; null: 0.1).", "trained",
                                    ge=0)
    cpo_alpha: float | None = knob(None, "CPO/SimPO: weight of the NLL term (null: TRL's 1.0; SimPO: 0).",
                                   "trained", ge=0)
    simpo_gamma: float | None = knob(None, "SimPO: target reward margin (null: TRL's 0.5).", "trained", ge=0)
    kto_desirable_weight: float = knob(1.0, "KTO: weight of the desirable (label true) rows' loss.", "trained", gt=0)
    kto_undesirable_weight: float = knob(1.0, "KTO: weight of the undesirable rows' loss.", "trained", gt=0)
    loss_watchdog_threshold: float | None = knob(
        None, "Stop training with an error when the loss stays above this for loss_watchdog_patience logged steps.",
        gt=0,
    )
    loss_watchdog_patience: int = knob(3, "Logged steps above loss_watchdog_threshold before training stops.", ge=1)
    group_by_length: bool = knob(
        False, "Batch rows of similar length together (transformers' group_by_length sampler); supervised "
        "fine-tuning only.", "trained",
    )
    resize_token_embeddings_to_32x: bool = knob(
        False, "Grow the embedding matrix to a multiple of 32 rows (faster matmuls); the extra rows are unused.",
        "trained",
    )
    model_config_overrides: dict[str, Any] = knob(
        {}, "Config attributes set when the base model loads (Axolotl's `model_config`, e.g. "
        "{output_router_logits: true}).", "trained",
    )
    unfrozen_parameters: list[str] = knob(
        [], "Full fine-tune: regexes of the parameter names that are trained; every other parameter is frozen.",
        "trained",
    )

    # issue 18: tracking. No stage tag on any of these: they decide where metrics go, not what is trained
    # (newt/tracking.py turns them into transformers' `report_to` and the trackers' environment variables).
    report_to: list[Literal["mlflow", "wandb", "tensorboard"]] = knob(
        [], "Experiment trackers that receive every logged training step; the wandb_*/mlflow_*/use_tensorboard "
        "keys below also switch their tracker on (as in Axolotl).",
    )
    wandb_project: str | None = knob(None, "Weights & Biases project; setting it turns W&B tracking on.")
    wandb_entity: str | None = knob(None, "W&B entity (team or user); default: the API key's default entity.")
    wandb_name: str | None = knob(None, "Tracker run name (W&B and MLflow); default: the recipe's name.")
    wandb_mode: Literal["online", "offline", "disabled"] | None = knob(
        None, "W&B mode: `offline` writes the run folder locally (`wandb sync` uploads it later).",
    )
    wandb_run_id: str | None = knob(None, "W&B run id to create or continue (resumes that run's charts).")
    mlflow_tracking_uri: str | None = knob(
        None, "MLflow tracking server (http://host:port) or store URI; setting it turns MLflow tracking on. "
        "Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN in the environment, never the recipe.",
    )
    mlflow_experiment_name: str | None = knob(
        None, "MLflow experiment (created when missing); default: the recipe's name. Turns MLflow tracking on."
    )
    use_tensorboard: bool = knob(False, "Write TensorBoard event files (under NEWT_TRACKING_DIR, see docs/tracking.md).")
    resume_from_checkpoint: str | bool | None = knob(
        None, "Resume training from this Trainer checkpoint folder (local path or fsspec URL); `true` = the newest "
        "checkpoint of the stage's own work folder (what a relaunch after a crash does anyway). Not part of any key.",
    )

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _path_or_true(cls, value: Any) -> Any:
        # Checked before pydantic's union, whose per-member errors would name `resume_from_checkpoint.str`/`.bool`.
        if value is not None and not isinstance(value, (str, bool)):
            raise ValueError("expected a checkpoint folder (a path or fsspec URL) or true")
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # The recipe is copied into the artifact and onto the tracker run: a password in it would travel too.
        if value and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("the URI carries credentials (user:password@); remove them and export "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
        return value
    # issue 19: launchers (docs/scaling.md). World size = num_processes x num_machines changes the global batch, so
    # num_machines keys `trained`; which machine is which, and where rank 0 listens, change no weights: no tag.
    launcher: Literal["local", "ray"] = knob(
        "local", "Where `trained` runs its child: `local` (accelerate launch here, or the Dagster launcher "
        "resource) or `ray` (one accelerate launch per node of the Ray cluster at RAY_ADDRESS or NEWT_LAUNCHER).",
    )
    num_machines: int = knob(1, "Machines (nodes) training together; each runs num_processes processes.",
                             "trained", ge=1)
    machine_rank: int = knob(0, "This machine's rank among num_machines (0 is the main machine; not with ray).", ge=0)
    main_process_ip: str | None = knob(
        None, "Address of machine 0 that the other machines connect to (accelerate's --main_process_ip).",
    )
    main_process_port: int | None = knob(
        None, "Port on machine 0 for the rendezvous (accelerate's --main_process_port); unset: 29500 on several "
        "machines, a free port on one.",
        ge=1, le=65535,
    )
    ray_max_restarts: int = knob(
        3, "Times the ray launcher restarts the training after a worker or node dies (it resumes from the last "
        "checkpoint).", ge=0,
    )

    @model_validator(mode="after")
    def _machines(self) -> Recipe:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} is not below num_machines {self.num_machines}; "
                             f"ranks run 0..{self.num_machines - 1}")
        if self.launcher == "ray" and self.machine_rank:
            raise ValueError("machine_rank is set by the Ray launcher for each node; remove it with launcher: ray")
        if self.launcher == "local" and self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(f"num_machines: {self.num_machines} needs main_process_ip, the address of machine 0 "
                             "that every machine can reach (or launcher: ray, which finds it)")
        return self

    _name: str = PrivateAttr("recipe")
    _source: str | None = PrivateAttr(None)
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def notes(self) -> list[str]:
        """How Axolotl spellings in the file were read (`newt.axolotl`); `newt validate` prints them."""
        return self._notes

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        # Five fields, as Dagster's cron schedules take them; the full check happens when the schedule is built.
        if value is not None and len(value.split()) != 5:
            raise ValueError("expected a cron expression with 5 fields (minute hour day month weekday), "
                             "e.g. '0 3 * * *' for 03:00 UTC daily")
        return value

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        from newt.axolotl.rules import check_optimizer

        return check_optimizer(value)

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        from newt.axolotl.rules import check_scheduler

        return check_scheduler(value)

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, value: str) -> str:
        if value in ATTENTION_KERNELS or re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", value):
            return value
        hint = close_match(value, ATTENTION_KERNELS)
        raise ValueError(f"choose one of: {', '.join(ATTENTION_KERNELS)}, or a hub kernel `org/name`"
                         + (f" (did you mean {hint!r}?)" if hint else ""))

    @field_validator("lora_target_modules")
    @classmethod
    def _lora_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str) and value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"a string is `all-linear` or a regex of module names, and {value!r} is not a "
                                 f"valid regex ({exc}); fix the regex or give a list of module names") from None
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Recipe:
        # Every rule is checked and all problems are reported together (one per line; `_describe` splits them).
        problems: list[str] = []
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            problems.append("chat_template is 'jinja' but chat_template_jinja is empty; set chat_template_jinja")
        allowed = ["base", "merged", *self.quantize.variants()]
        for variant in self.eval.models:
            if variant not in allowed:
                hint = close_match(variant, allowed)
                problems.append(
                    f"eval.models: {variant!r} is not a model variant of this recipe; allowed: {', '.join(allowed)} "
                    "(quantized_<method> needs the method in quantize.outputs)"
                    + (f"; did you mean {hint!r}?" if hint else "")
                )
        if self.processor_type and self.sample_packing:
            problems.append("sample_packing cannot pack multimodal rows (processor_type is set): each row's "
                            "images travel with it; set sample_packing: false")
        if self.processor_type and self.rl:
            problems.append(f"rl: {self.rl} with processor_type: multimodal rows are trained with supervised "
                            "fine-tuning only; remove rl or processor_type")
        if self.eval.baseline == "base" and self.eval.max_drop and "base" not in self.eval.models:
            problems.append("eval.baseline is 'base' but eval.models does not evaluate 'base'; add it to eval.models")
        from newt.axolotl.rules import cross_field_problems  # issue 16: rules of the Axolotl keys

        problems += cross_field_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


class RecipeError(ValueError):
    """Every problem of one recipe file, each naming its key path, the bad value, what is allowed and the fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        plural = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {plural}:\n" + "\n".join(f"  - {p}" for p in problems))


# --- loading -------------------------------------------------------------------------------------------------

def group_name(stem: str) -> str:
    """The asset group name of a recipe file: its stem with every character Dagster does not allow in a name
    turned into `_` (`lora-1b.yml` → `lora_1b`, `3b.yml` → `_3b`), so that any file name is a recipe."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and name a recipe file. The file stem, made a legal name (`group_name`), is the asset group."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, [f"file not found; expected a YAML recipe at {source}"])
    return parse_recipe(path.read_text(encoding="utf-8"), source=source, name=group_name(path.stem))


def check_unique_names(recipes: list[Recipe]) -> None:
    """Two files whose derived group names collide (`lora-1b.yml`, `lora_1b.yml`) cannot both be asset groups."""
    seen: dict[str, str] = {}
    for r in recipes:
        first = seen.setdefault(r.name, str(r.source))
        if first != str(r.source):
            raise RecipeError(str(r.source), [f"its asset group name {r.name!r} is also the name of {first}; "
                                              "rename one of the two files"])


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML forbids it; PyYAML silently keeps the
    last one, so a second `learning_rate:` further down would quietly win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_recipe(text: str, *, source: str = "<recipe>", name: str = "recipe") -> Recipe:
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"YAML syntax error at {where}{problem}; fix the YAML"]) from None
    except RecursionError:
        raise RecipeError(source, ["YAML nesting is too deep to read; fix the YAML"]) from None
    except ValueError as exc:  # a plain scalar YAML resolves but cannot build, e.g. the date 2001-02-30
        raise RecipeError(
            source, [f"YAML value error: {exc}; quote the value (e.g. '2001-02-30') if it is meant as text"]
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [f"expected a mapping of recipe keys at the top level, got {type(data).__name__}"])
    from newt.axolotl import translate
    from newt.axolotl.standins import StandinsError, apply_standins

    # Axolotl-only keys: rewritten to their newt spelling, noted, or each named in the error with the alternative.
    fields = {"": set(Recipe.model_fields), "datasets": set(DatasetSpec.model_fields),
              "trl": set(TrlConfig.model_fields)}
    data, problems, notes = translate(data, fields)
    data, unset_notes = drop_unset(data, Recipe)
    try:
        data, standin_notes = apply_standins(data)
    except StandinsError as exc:
        raise RecipeError(exc.source, [exc.problem]) from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, problems + describe_errors(exc.errors(), data, Recipe)) from None
    if problems:
        raise RecipeError(source, problems)
    recipe._notes = notes + unset_notes + standin_notes
    recipe._name = name
    recipe._source = source
    return recipe


def parse_resolved(path: str | Path) -> Recipe:
    """A resolved recipe (the JSON the trained stage writes for its child, or any recipe YAML) through the same
    parser as every other recipe, so the child reports newt's own errors too."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [f"file not found; expected a resolved recipe at {path}"])
    return parse_recipe(path.read_text(encoding="utf-8"), source=str(path), name=group_name(path.stem))


# --- stage tags --------------------------------------------------------------------------------------------


def field_stages(model: type[BaseModel], name: str) -> list[str]:
    extra = model.model_fields[name].json_schema_extra
    return list(extra.get("stages", [])) if isinstance(extra, dict) else []


def stage_fields(obj: BaseModel, stage: str) -> dict[str, Any]:
    """The recipe values that determine `stage`'s output, derived from the schema's stage tags.

    A nested model (or list of models) contributes only its own tagged sub-fields, so `datasets[].path` keys the
    `dataset` stage while `datasets[].field_messages` keys `prepared`.
    """
    out: dict[str, Any] = {}
    for name in type(obj).model_fields:
        if stage not in field_stages(type(obj), name):
            continue
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            out[name] = stage_fields(value, stage)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [stage_fields(v, stage) for v in value]
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def iter_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, Any, str, list[str]]]:
    """(key path, field info, type text, stages) for every field, nested models expanded (docs generation)."""
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        rows.append((path, info, _type_text(info.annotation), field_stages(model, name)))
        inner = inner_model(info.annotation)
        if inner is not None:
            sep = "[]." if get_origin(info.annotation) is list else "."
            rows.extend(iter_fields(inner, path + sep))
    return rows


def _type_text(annotation: Any) -> str:
    return re.sub(r"typing\.|newt\.config\.", "", str(annotation)).replace("<class '", "").replace("'>", "")
