"""Axolotl compatibility: an Axolotl YAML in the supported subset is a newt recipe as it stands.

newt's key names follow Axolotl wherever newt has the concept (docs/migrating-from-axolotl.md), so most of an
Axolotl file needs nothing. This module handles the rest, before the schema validates the file:

* RENAMES — Axolotl spellings with an exact newt equivalent are rewritten (`lora_target_linear: true` →
  `lora_target_modules: all-linear`, `flash_attention: true` → `attn_implementation: flash_attention_2`, ...).
* UNSUPPORTED — Axolotl keys newt does not have. Set to something, each is one problem of the recipe error
  ("Axolotl key X is not supported by newt: why, and what to do instead"), all reported together. Set to nothing
  (null, false, "", [] — Axolotl's own "off"), they ask for nothing newt does not already do: they are accepted
  and listed in the recipe's notes (`newt validate` prints them), never dropped silently.

Axolotl reads its config through a dict that returns None for missing keys, so a typo there reads as "feature
off"; newt's schema forbids unknown keys, which is why this list exists at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_OFF = (None, False, "", [], {})

_TRACKING = (
    "this tracker setting is not supported; newt's trackers are report_to: [mlflow, wandb, tensorboard] with "
    "the wandb_*/mlflow_* keys (docs/tracking.md)"
)
_OUTPUT = "artifacts live in newt's content-addressed store (NEWT_STORE), one folder per stage key; remove it"
_EVAL_DURING_TRAINING = "newt evaluates after training in the `evaluation` stage (eval.*); remove it"
_DISTRIBUTED = "use `num_processes` and `accelerate_config` (presets fsdp, deepspeed_zero2, deepspeed_zero3)"

# Axolotl key → why newt does not take it and what to do instead.
UNSUPPORTED: dict[str, str] = {
    "output_dir": _OUTPUT,
    "dataset_prepared_path": "prepared data is cached in the store under a key of everything that shapes it "
    "(data content, tokenizer files, template, masking knobs); remove it",
    "push_dataset_to_hub": "newt does not publish datasets; remove it",
    "hub_model_id": "newt does not push to the hub; publish the `merged` or `quantized` artifact yourself",
    "hub_strategy": "newt does not push to the hub; remove it",
    "auto_resume_from_checkpoints": "the trained stage always resumes from its last checkpoint; remove it",
    "model_type": "newt loads every model with AutoModelForCausalLM, or AutoModelForImageTextToText for a "
    "vision-language model; remove it",
    "skip_prepare_dataset": "newt always prepares (and audits) the masks; images become pixels at training time; "
    "remove it",
    "remove_unused_columns": "newt keeps the columns its collator needs; remove it",
    "image_size": "set the size in the processor's preprocessor config (tokenizer_config points at another one)",
    "image_resize_algorithm": "set resampling in the processor's preprocessor config",
    "tokenizer_type": "newt loads every tokenizer with AutoTokenizer; remove it (tokenizer_config picks another one)",
    "base_model_config": "newt reads the config beside the weights of base_model; remove it",
    "is_llama_derived_model": "newt detects the architecture from the model config; remove it",
    "is_mistral_derived_model": "newt detects the architecture from the model config; remove it",
    "is_qwen_derived_model": "newt detects the architecture from the model config; remove it",
    "strict": "newt's schema is always strict (unknown keys are errors); remove it",
    "load_in_8bit": "8-bit training is not supported; use `adapter: qlora` (4-bit) or plain LoRA",
    "load_in_4bit": "write `adapter: qlora` (LoRA on a bitsandbytes 4-bit base) instead",
    "gptq": "GPTQ bases are not supported; use a full-precision base with lora or qlora",
    "fp16": "write `mixed_precision: fp16`",
    "float16": "write `mixed_precision: fp16`",
    "bfloat16": "write `bf16: true` (bf16 weights) or `mixed_precision: bf16`",
    "xformers_attention": "use `attn_implementation` (eager, sdpa, flash_attention_2)",
    "s2_attention": "use `attn_implementation` (eager, sdpa, flash_attention_2)",
    "flash_attn_cross_entropy": "not supported; remove it",
    "flash_attn_rms_norm": "not supported; remove it",
    "flash_attn_fuse_qkv": "not supported; remove it",
    "flash_attn_fuse_mlp": "not supported; remove it",
    "sample_packing_eff_est": "packing is exact (first-fit bins); remove it",
    "eval_sample_packing": "validation rows are never packed; remove it",
    "pad_to_sequence_len": "newt pads each batch to its longest row (packing fills bins to sequence_len); remove it",
    "special_tokens": "newt does not add or replace special tokens; use a tokenizer that has them (tokenizer_config)",
    "tokens": "newt does not add tokens to the vocabulary; use a tokenizer that has them (tokenizer_config)",
    "added_tokens_overrides": "newt does not change the vocabulary; remove it",
    "chat_template_kwargs": "not supported; put the template you want in chat_template_jinja",
    "default_system_message": "not supported; put the system turn in the data or the template",
    "wandb_watch": _TRACKING,
    "wandb_log_model": _TRACKING,
    "comet_api_key": _TRACKING,
    "comet_project_name": _TRACKING,
    "eval_steps": _EVAL_DURING_TRAINING,
    "evals_per_epoch": _EVAL_DURING_TRAINING,
    "eval_strategy": _EVAL_DURING_TRAINING,
    "eval_table_size": _EVAL_DURING_TRAINING,
    "eval_max_new_tokens": "write `eval.max_new_tokens`",
    "do_bench_eval": _EVAL_DURING_TRAINING,
    "bench_dataset": _EVAL_DURING_TRAINING,
    "test_datasets": "newt holds out `val_set_size` rows of `datasets` for evaluation; merge them or set val_set_size",
    "early_stopping_patience": "training runs max_steps/num_epochs; evaluation gates (eval.thresholds) judge it after",
    "saves_per_epoch": "use `save_steps`",
    "save_strategy": "use `save_steps`",
    "save_total_limit": "the trained stage keeps only what resume needs; remove it",
    "save_safetensors": "newt always saves safetensors; remove it",
    "warmup_ratio": "use `warmup_steps`",
    "cosine_min_lr_ratio": "not supported; lr_scheduler cosine decays to 0",
    "lr_scheduler_kwargs": "not supported; pick an lr_scheduler",
    "max_grad_norm": "not supported yet (TRL's default 1.0 applies); remove it",
    "adam_beta1": "not supported yet (TRL's defaults apply); remove it",
    "adam_beta2": "not supported yet (TRL's defaults apply); remove it",
    "adam_epsilon": "not supported yet (TRL's defaults apply); remove it",
    "neftune_noise_alpha": "not supported; remove it",
    "group_by_length": "not supported; remove it",
    "lora_model_dir": "starting from an existing adapter is not supported; merge it into the base model first",
    "lora_fan_in_fan_out": "not supported (only needed for GPT-2-style Conv1D layers); remove it",
    "peft_use_dora": "DoRA is not supported; use lora",
    "peft_use_rslora": "rsLoRA is not supported; use lora",
    "lora_on_cpu": "not supported; remove it",
    "gpu_memory_limit": "not supported; remove it",
    "unfrozen_parameters": "use `lora_modules_to_save` (LoRA) or `adapter: null` (full fine-tune)",
    "deepspeed": _DISTRIBUTED,
    "fsdp": _DISTRIBUTED,
    "fsdp_config": _DISTRIBUTED,
    "ddp_timeout": _DISTRIBUTED,
    "local_rank": "set by the launcher; remove it",
    "debug": "remove it; `newt preview RECIPE` shows rows with their masks",
    "data_seed": "`seed` seeds the split, shuffling and training; remove it",
    "dataset_shard_num": "not supported; remove it",
    "dataset_shard_idx": "not supported; remove it",
    "pretraining_dataset": "streaming pretraining data is not supported; use datasets with type completion",
    "plugins": "Axolotl plugins do not apply to newt; remove them",
    "liger_kernel": "not supported; remove it",
    "liger_rope": "not supported; remove it",
    "liger_rms_norm": "not supported; remove it",
    "liger_glu_activation": "not supported; remove it",
    "liger_fused_linear_cross_entropy": "not supported; remove it",
    "unsloth_lora_mlp": "not supported; remove it",
    "unsloth_lora_qkv": "not supported; remove it",
    "unsloth_lora_o": "not supported; remove it",
    "torch_compile_backend": "newt compiles with the default backend (torch_compile: true); remove it",
    "loss_watchdog_threshold": "not supported; remove it",
    "loss_watchdog_patience": "not supported; remove it",
}

# Axolotl key → values that ask for exactly what newt does anyway: accepted (with a note), any other value is a
# problem with the reason in UNSUPPORTED.
AGREES: dict[str, tuple[Any, ...]] = {
    "model_type": ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForVision2Seq"),
    "skip_prepare_dataset": (True,),
    "remove_unused_columns": (False,),
    "tokenizer_type": ("AutoTokenizer", "PreTrainedTokenizerFast"),
    "save_safetensors": (True,),
}

DATASET_UNSUPPORTED: dict[str, str] = {
    "conversation": "the fastchat `conversation` of the old sharegpt type is gone; use type chat_template with "
    "the recipe's chat_template",
    "chat_template": "one chat template per recipe: set chat_template at the top level",
    "shards": "not supported; select files with data_files instead",
    "shards_idx": "not supported; select files with data_files instead",
    "preprocess_shards": "not supported; remove it",
    "drop_system_message": "not supported; remove the system turns from the data",
    "train_on_eot": "use train_on_eos (newt counts the end-of-turn marker as the turn's end)",
    "message_field_training": "per-message training flags are not supported; use roles_to_train",
    "message_field_training_detail": "per-message training flags are not supported; use roles_to_train",
    "revision": "pinning a hub dataset revision is not supported yet; newt keys the data by the commit it read",
}


def _attn(kernel: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {"attn_implementation": kernel} if value else {}


# Axolotl key → function of its value giving the newt keys it means ({} = it asks for nothing).
RENAMES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "lora_target_linear": lambda v: {"lora_target_modules": "all-linear"} if v else {},
    "flash_attention": _attn("flash_attention_2"),
    "sdp_attention": _attn("sdpa"),
    "eager_attention": _attn("eager"),
    "dataset_processes": lambda v: {"dataset_num_proc": v} if v else {},
    "eval_batch_size": lambda v: {},  # newt scores held-out rows one at a time
    "reward_model": lambda v: {"rl": "reward"} if v else {},  # issue 18: TRL RewardTrainer (newt/train/reward.py)
}

DATASET_RENAMES: dict[str, Callable[[Any], dict[str, Any]]] = {
    # Axolotl's older spellings of message_property_mappings (still accepted by Axolotl)
    "message_field_role": lambda v: {"message_property_mappings": {"role": v}} if v else {},
    "message_field_content": lambda v: {"message_property_mappings": {"content": v}} if v else {},
}


def _off(value: Any) -> bool:
    return any(value is o or (value == o and type(value) is type(o)) for o in _OFF)


def _apply(
    data: dict[str, Any],
    known: set[str],
    renames: dict[str, Callable[[Any], dict[str, Any]]],
    unsupported: dict[str, str],
    where: str,
) -> tuple[dict[str, Any], list[str], list[str]]:
    out: dict[str, Any] = {
        k: v for k, v in data.items() if k in known or k not in renames and k not in unsupported
    }
    problems: list[str] = []
    notes: list[str] = []
    for key, value in data.items():
        if key in known:
            continue
        name = f"{where}{key}"
        if key in renames:
            for target, new in renames[key](value).items():
                if isinstance(new, dict) and isinstance(out.get(target), dict):
                    out[target] = {**out[target], **new}
                elif target in out and out[target] != new:
                    problems.append(
                        f"{name}: Axolotl key means {where}{target}: {new!r}, but {where}{target} is "
                        f"also set to {out[target]!r}; keep one of them"
                    )
                    continue
                else:
                    out[target] = new
                notes.append(f"{name}: {value!r} read as {where}{target}: {out[target]!r}")
            if not renames[key](value):
                notes.append(
                    f"{name}: {value!r} asks for nothing; newt's default applies (you can delete it)"
                )
        elif key in unsupported:
            if any(value == v and type(value) is type(v) for v in AGREES.get(key, ())):
                notes.append(f"{name}: {value!r} is what newt does; accepted (you can delete it)")
            elif _off(value):
                notes.append(f"{name}: {value!r} asks for nothing; accepted (you can delete it)")
            else:
                problems.append(f"{name}: Axolotl key {key!r} is not supported by newt: {unsupported[key]}")
    return out, problems, notes


def translate(data: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(recipe data with Axolotl spellings rewritten, problems, notes). Keys of newt's schema pass untouched."""
    from newt.config import DatasetSpec, Recipe

    pre: list[str] = []
    if (
        data.get("load_in_4bit") is True
        and data.get("adapter") == "qlora"
        and "load_in_4bit" not in Recipe.model_fields
    ):
        # Axolotl's QLoRA spelling is the pair; newt's `adapter: qlora` already means the 4-bit base.
        data = {k: v for k, v in data.items() if k != "load_in_4bit"}
        pre.append("load_in_4bit: True is implied by adapter: qlora; accepted (you can delete it)")
    out, problems, notes = _apply(data, set(Recipe.model_fields), RENAMES, UNSUPPORTED, "")
    notes = pre + notes
    datasets = out.get("datasets")
    if isinstance(datasets, list):
        fixed = []
        for i, spec in enumerate(datasets):
            if not isinstance(spec, dict):
                fixed.append(spec)
                continue
            spec_out, p, n = _apply(
                spec, set(DatasetSpec.model_fields), DATASET_RENAMES, DATASET_UNSUPPORTED, f"datasets[{i}]."
            )
            if "message_property_mappings" in spec_out and "message_property_mappings" not in spec:
                # a partial mapping from the old spellings keeps the default for the other half
                spec_out["message_property_mappings"] = {
                    "role": "role",
                    "content": "content",
                    **spec_out["message_property_mappings"],
                }
            fixed.append(spec_out)
            problems += p
            notes += n
        out["datasets"] = fixed
    return out, problems, notes
