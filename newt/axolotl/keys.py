"""What newt does with each Axolotl key: the one table behind the parser (`newt.axolotl.translate`) and the key table
of docs/migrating-from-axolotl.md (`python -m newt.docgen`).

Each key is one of three kinds:

* **applied** — newt does what Axolotl does. Either the key is a field of newt's schema with Axolotl's meaning (then
  `to` is None and the key passes to the schema as it is), or `to` rewrites its value into newt's own keys.
* **noted** — accepted with a one-line note, because newt's design covers what the key is for (the store instead of
  `output_dir`, the `prepared` stage instead of `dataset_prepared_path`, ...). Speed-only kernels are noted too:
  they change how fast a step runs, not what it computes.
* **refused** — newt cannot honour it; the text says what to do instead. An empty value (null, false, "", [], {})
  asks for nothing and is accepted with a note; so is a value in `agrees` (what newt does anyway).

Meanings follow Axolotl's config reference (docs/config-reference in the Axolotl repository).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["applied", "noted", "refused"]

# Axolotl's `attention:` values → newt's attn_implementation
ATTENTION = {"flash": "flash_attention_2", "fa2": "flash_attention_2", "fa3": "flash_attention_3", "sdp": "sdpa",
             "flex": "flex_attention", "xformers": "sdpa"}


@dataclass(frozen=True)
class Key:
    kind: Kind
    text: str
    to: Callable[[Any], dict[str, Any]] | None = None
    agrees: tuple[Any, ...] = ()


def applied(text: str, to: Callable[[Any], dict[str, Any]] | None = None) -> Key:
    return Key("applied", text, to)


def noted(text: str) -> Key:
    return Key("noted", text)


def refused(text: str, *agrees: Any) -> Key:
    return Key("refused", text, None, agrees)


def _attn(kernel: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {"attn_implementation": kernel} if value else {}


_SPEED = "a speed/memory kernel: newt computes the same with PEFT/PyTorch's own layers"
_TRACKING = (
    "this tracker setting is not supported; newt's trackers are report_to: [mlflow, wandb, tensorboard] with "
    "the wandb_*/mlflow_*/use_tensorboard keys (docs/tracking.md)"
)
_TRACKED = "a key of newt's schema with Axolotl's meaning (docs/tracking.md); not part of any key"
_ARCH = "newt reads the architecture from the model's config.json; accepted"

# Axolotl's keys with newt's reading. Keys of newt's schema are listed as `applied` with to=None: they pass as they
# are (tests/test_axolotl_keys.py checks they are schema fields, and that no other entry shadows one).
KEYS: dict[str, Key] = {
    # --- applied: the same key in newt's schema ---------------------------------------------------------------
    "warmup_ratio": applied("warm-up as a share of all steps (TrainingArguments warmup_steps as a ratio)"),
    "saves_per_epoch": applied("save_steps = steps per epoch / saves_per_epoch"),
    "save_steps": applied("checkpoint interval (TrainingArguments save_steps)"),
    "save_total_limit": applied("checkpoints kept (TrainingArguments save_total_limit)"),
    "evals_per_epoch": applied("evaluation of the held-out split during training, eval_loss logged beside loss"),
    "eval_steps": applied("evaluation interval during training (TrainingArguments eval_steps)"),
    "bf16": applied("`true`: bf16 weights; `auto`: bf16 where the GPU supports it (TrainingArguments bf16)"),
    "tf32": applied("TF32 matmuls (TrainingArguments tf32)"),
    "optimizer": applied("any transformers OptimizerNames name (TrainingArguments optim); 8-bit ones via "
                         "bitsandbytes, with a clear error where the machine cannot run them"),
    "lora_target_modules": applied("a list of module names or a regex (PEFT target_modules)"),
    "lora_target_linear": applied("every linear layer but the output head, plus lora_target_modules"),
    "gradient_checkpointing": applied("TrainingArguments gradient_checkpointing; `offload`/`unsloth` read as true"),
    "torch_compile": applied("TrainingArguments torch_compile; `auto` read as true"),
    "gradient_checkpointing_kwargs": applied("TrainingArguments gradient_checkpointing_kwargs"),
    "special_tokens": applied("tokens set on the tokenizer, embeddings resized, new rows trained"),
    "tokens": applied("tokens added to the vocabulary, embeddings resized, new rows trained"),
    "eot_tokens": applied("added as special tokens; checked to be the turn ends masking uses"),
    "load_in_8bit": applied("LoRA on a bitsandbytes 8-bit base (BitsAndBytesConfig load_in_8bit)"),
    "deepspeed": applied("the training child's accelerate config (a JSON path, or a preset by ZeRO stage)"),
    "fsdp": applied("the training child's accelerate config (FSDP plugin)"),
    "fsdp_config": applied("the training child's accelerate config (fsdp_* settings)"),
    "fsdp_version": applied("the training child's accelerate config (fsdp_version)"),
    "plugins": applied("Liger and Cut Cross Entropy plugins through the gpu extra; skipped with a log line on CPU"),
    "liger_rope": applied("Liger kernel (TrainingArguments use_liger_kernel + liger_kernel_config)"),
    "liger_rms_norm": applied("Liger kernel (TrainingArguments use_liger_kernel + liger_kernel_config)"),
    "liger_layer_norm": applied("Liger kernel (TrainingArguments use_liger_kernel + liger_kernel_config)"),
    "liger_glu_activation": applied("Liger kernel (TrainingArguments use_liger_kernel + liger_kernel_config)"),
    "liger_cross_entropy": applied("Liger kernel (TrainingArguments use_liger_kernel + liger_kernel_config)"),
    "liger_fused_linear_cross_entropy": applied("Liger kernel (use_liger_kernel + liger_kernel_config)"),
    "cut_cross_entropy": applied("Cut Cross Entropy through the gpu extra; skipped with a log line on CPU"),
    "rl": applied("dpo, kto, grpo (TRL) and orpo, cpo, simpo (TRL's experimental ORPO/CPO trainers)"),
    "trl": applied("GRPO settings; `trl.beta` is rl_beta"),
    "rl_beta": applied("beta of DPO/KTO/GRPO/CPO/SimPO"),
    "orpo_alpha": applied("ORPO's odds-ratio weight (ORPOConfig beta)"),
    "cpo_alpha": applied("CPO/SimPO NLL weight (CPOConfig cpo_alpha)"),
    "simpo_gamma": applied("SimPO margin (CPOConfig simpo_gamma)"),
    "max_grad_norm": applied("gradient clipping (TrainingArguments max_grad_norm)"),
    "adam_beta1": applied("TrainingArguments adam_beta1"),
    "adam_beta2": applied("TrainingArguments adam_beta2"),
    "adam_epsilon": applied("TrainingArguments adam_epsilon"),
    "cosine_min_lr_ratio": applied("cosine decays to this share of learning_rate (cosine_with_min_lr)"),
    "lr_scheduler_kwargs": applied("TrainingArguments lr_scheduler_kwargs"),
    "neftune_noise_alpha": applied("TrainingArguments neftune_noise_alpha"),
    "lora_fan_in_fan_out": applied("PEFT LoraConfig fan_in_fan_out"),
    "peft_use_dora": applied("PEFT LoraConfig use_dora"),
    "peft_use_rslora": applied("PEFT LoraConfig use_rslora"),
    "group_by_length": applied("TrainingArguments train_sampling_strategy: group_by_length (supervised rows)"),
    "resize_token_embeddings_to_32x": applied("embeddings resized to a multiple of 32 rows"),
    "kto_desirable_weight": applied("KTOConfig desirable_weight"),
    "kto_undesirable_weight": applied("KTOConfig undesirable_weight"),
    "loss_watchdog_threshold": applied("training stops with an error when the loss stays above it"),
    "loss_watchdog_patience": applied("logged steps above the threshold before the watchdog stops training"),
    "unfrozen_parameters": applied("full fine-tune: only parameters matching one of the regexes train; with an "
                                   "adapter the adapter decides what trains (noted)"),
    # --- applied: rewritten to newt's spelling ----------------------------------------------------------------
    "fp16": applied("fp16 mixed precision (mixed_precision: fp16)",
                    lambda v: {"mixed_precision": "fp16"} if v else {}),
    "bfloat16": applied("bf16 weights without autocast (bf16: true)", lambda v: {"bf16": True} if v else {}),
    "flash_attention": applied("attn_implementation: flash_attention_2", _attn("flash_attention_2")),
    "sdp_attention": applied("attn_implementation: sdpa", _attn("sdpa")),
    "flex_attention": applied("attn_implementation: flex_attention", _attn("flex_attention")),
    "eager_attention": applied("attn_implementation: eager", _attn("eager")),
    "dataset_processes": applied("dataset_num_proc", lambda v: {"dataset_num_proc": v} if v else {}),
    "eval_max_new_tokens": applied("eval.max_new_tokens", lambda v: {"eval": {"max_new_tokens": v}} if v else {}),
    "eval_batch_size": applied("asks for nothing newt needs: held-out rows are scored one at a time",
                               lambda v: {}),
    "attention": applied("attn_implementation (flash → flash_attention_2, sdpa, eager, flex → flex_attention)",
                         lambda v: {"attn_implementation": ATTENTION.get(v, v)} if v else {}),
    "model_config": applied("model_config_overrides: config attributes set when the base model loads",
                            lambda v: {"model_config_overrides": v} if v else {}),
    "load_in_4bit": applied("with adapter: qlora, the 4-bit base newt's qlora loads"),
    "batch_size": applied("gradient_accumulation_steps = batch_size / micro_batch_size"),
    "pretraining_dataset": applied("read in full as datasets of type completion (text_column → field)"),
    # --- noted: newt's design covers it -----------------------------------------------------------------------
    "output_dir": noted("artifacts live in newt's content-addressed store (NEWT_STORE); `newt export` copies "
                        "a model out"),
    "dataset_prepared_path": noted("the `prepared` stage caches the prepared data in the store"),
    "model_type": noted("newt loads with AutoModelForCausalLM, or AutoModelForMultimodalLM for a "
                        "vision- or audio-language model"),
    "tokenizer_type": noted("newt loads the tokenizer with AutoTokenizer"),
    "base_model_config": noted("newt reads the config beside the weights of base_model"),
    "is_llama_derived_model": noted(_ARCH),
    "is_mistral_derived_model": noted(_ARCH),
    "is_qwen_derived_model": noted(_ARCH),
    "is_falcon_derived_model": noted(_ARCH),
    "strict": noted("newt's schema is always strict: unknown keys are errors"),
    "save_safetensors": noted("newt always saves safetensors"),
    "hub_model_id": noted("newt does not push to the hub; publish the `merged`/`quantized` artifact (newt export)"),
    "hub_strategy": noted("newt does not push to the hub"),
    "push_dataset_to_hub": noted("newt does not publish datasets; the prepared data stays in the store"),
    "hf_use_auth_token": noted("the hub token comes from HF_TOKEN / huggingface-cli login"),
    "local_rank": noted("set by the launcher"),
    "debug": noted("`newt preview RECIPE` shows rows with their masks"),
    "auto_resume_from_checkpoints": noted("the trained stage always resumes from its last checkpoint"),
    "save_strategy": noted("checkpoints follow save_steps/saves_per_epoch"),
    "eval_strategy": noted("evaluation during training follows eval_steps/evals_per_epoch"),
    "eval_table_size": noted("generations on held-out rows are the `evaluation` stage's (eval.max_samples)"),
    "do_causal_lm_eval": noted("held-out generation metrics are the `evaluation` stage's"),
    "eval_causal_lm_metrics": noted("held-out generation metrics are the `evaluation` stage's"),
    "include_tokens_per_second": noted("newt always logs tokens/s"),
    "skip_prepare_dataset": noted("newt always prepares (and audits) the masks; images become pixels at "
                                  "training time"),
    "remove_unused_columns": noted("newt keeps the columns its collator needs"),
    "sample_packing_eff_est": noted("packing is exact (first-fit bins)"),
    "eval_sample_packing": noted("validation rows are never packed"),
    "pad_to_sequence_len": noted("newt pads each batch to its longest row; padding is masked, so the loss is the same"),
    "xformers_attention": noted("newt uses PyTorch's memory-efficient sdpa attention (the same math)"),
    "flash_attn_cross_entropy": noted(_SPEED),
    "flash_attn_rms_norm": noted(_SPEED),
    "flash_attn_fuse_qkv": noted(_SPEED),
    "flash_attn_fuse_mlp": noted(_SPEED),
    "lora_mlp_kernel": noted(_SPEED),
    "lora_qkv_kernel": noted(_SPEED),
    "lora_o_kernel": noted(_SPEED),
    "unsloth_lora_mlp": noted(_SPEED),
    "unsloth_lora_qkv": noted(_SPEED),
    "unsloth_lora_o": noted(_SPEED),
    "unsloth_cross_entropy_loss": noted(_SPEED),
    "unsloth_rms_norm": noted(_SPEED),
    "unsloth_rope": noted(_SPEED),
    "embeddings_skip_upcast": noted(_SPEED),
    "torch_compile_backend": noted("newt compiles with the default backend (torch_compile: true)"),
    "torch_compile_mode": noted("newt compiles with the default mode (torch_compile: true)"),
    "dataloader_num_workers": noted("a loading-speed setting; newt's rows are pre-tokenized"),
    "dataloader_pin_memory": noted("a loading-speed setting"),
    "dataloader_prefetch_factor": noted("a loading-speed setting"),
    "low_cpu_mem_usage": noted("transformers loads with low CPU memory use by default"),
    "ddp_find_unused_parameters": noted("newt sets it for its own LoRA/full models"),
    "ddp_timeout": noted("a launcher setting; newt's default applies"),
    "ddp_bucket_cap_mb": noted("a communication-speed setting"),
    "ddp_broadcast_buffers": noted("a communication-speed setting"),
    "gc_steps": noted("a memory setting"),
    "tokenizer_use_fast": noted("AutoTokenizer loads the fast tokenizer where one exists"),
    "tokenizer_save_jinja_files": noted("newt saves the tokenizer with transformers' defaults"),
    "float32": noted("float32 weights are newt's default"),
    "save_first_step": noted("checkpoints follow save_steps/saves_per_epoch"),
    "profiler_steps": noted("profiling is not part of a newt run"),
    "vllm": noted("newt's GRPO generates with vLLM colocated on the training GPU (trl.use_vllm); a vLLM "
                  "server's settings are not used"),
    "pretrain_multipack_attn": noted("newt's packing never attends across packed examples"),
    "pretrain_multipack_buffer_size": noted("packing is exact over the whole prepared split"),
    "use_kernels": noted(_SPEED),
    "experimental_skip_move_to_device": noted("a memory setting of model loading"),
    "activation_offloading": noted("a memory setting: activations are recomputed or kept, the step is the same"),
    "save_only_model": noted("newt's checkpoints keep what resume needs; the artifact holds only the model"),
    "model_quantization_config_kwargs": noted("read with model_quantization_config"),
    "moe_kernels": noted(_SPEED),
    "ray_num_workers": noted("newt runs Ray through its own executor settings, not the recipe"),
    "ray_run_name": noted("newt runs Ray through its own executor settings, not the recipe"),
    "dataset_keep_in_memory": noted("a memory setting of dataset loading"),
    "ddp": noted("set by the launcher (num_processes)"),
    "world_size": noted("set by the launcher (num_processes)"),
    "sample_packing_group_size": noted("packing is exact over the whole prepared split"),
    "sample_packing_bin_size": noted("packing is exact over the whole prepared split"),
    "multipack_real_batches": noted("packing is exact over the whole prepared split"),
    "flash_optimum": noted(_SPEED),
    "fsdp_final_state_dict_type": noted("the trained artifact always holds the full weights"),
    "is_preprocess": noted("an Axolotl-internal value"),
    "preprocess_iterable": noted("an Axolotl-internal value"),
    "total_num_tokens": noted("an Axolotl-internal value (newt counts tokens in the prepared stage)"),
    "total_supervised_tokens": noted("an Axolotl-internal value (newt counts tokens in the prepared stage)"),
    "axolotl_config_path": noted("an Axolotl-internal value"),
    "use_ray": noted("newt runs Ray through its own executor settings, not the recipe"),
    # --- issue 18: trackers, manual resume, reward models -------------------------------------------------------
    **{k: applied(_TRACKED) for k in ("wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_mode",
                                      "mlflow_tracking_uri", "mlflow_experiment_name", "use_tensorboard")},
    "resume_from_checkpoint": applied("resume the trained stage from that checkpoint folder (local or fsspec URL), "
                                      "or `true`: from the last one in its work folder (docs/training.md)"),
    "reward_model": applied("trains a reward model with TRL's RewardTrainer (newt's rl: reward)",
                            lambda v: {"rl": "reward"} if v else {}),
    "num_labels": refused("newt's sequence classifiers are reward models with one output (reward_model: true / "
                          "rl: reward); other classification heads are not supported", 1),
    # --- refused: newt cannot honour it -----------------------------------------------------------------------
    "gptq": refused("GPTQ bases are not supported; use a full-precision base with lora or qlora"),
    "float16": refused("fp16 weights without autocast are not supported; write `fp16: true` (mixed precision)"),
    "fp8": refused("fp8 training is not supported; use bf16"),
    "s2_attention": refused("shifted-sparse attention is not supported; use flash_attention or sdp_attention"),
    "special_tokens_overrides": refused("not supported; use special_tokens"),
    "added_tokens_overrides": refused("replacing vocabulary entries is not supported; add new tokens with `tokens`"),
    "chat_template_kwargs": refused("not supported; put the template you want in chat_template_jinja"),
    "default_system_message": refused("not supported; put the system turn in the data or the template"),
    "wandb_watch": refused(_TRACKING),
    "wandb_log_model": refused(_TRACKING),
    "comet_api_key": refused(_TRACKING),
    "comet_project_name": refused(_TRACKING),
    "use_wandb": refused(_TRACKING),
    "use_mlflow": refused(_TRACKING),
    "use_comet": refused(_TRACKING),
    "mlflow_run_name": refused(_TRACKING),
    "hf_mlflow_log_artifacts": refused(_TRACKING),
    "comet_workspace": refused(_TRACKING),
    "comet_experiment_key": refused(_TRACKING),
    "comet_mode": refused(_TRACKING),
    "comet_online": refused(_TRACKING),
    "comet_experiment_config": refused(_TRACKING),
    "use_otel_metrics": refused(_TRACKING),
    "otel_metrics_host": refused(_TRACKING),
    "otel_metrics_port": refused(_TRACKING),
    "do_bench_eval": refused("benchmarks run in the `evaluation` stage (eval.lm_eval_tasks)"),
    "bench_dataset": refused("benchmarks run in the `evaluation` stage (eval.lm_eval_tasks)"),
    "test_datasets": refused("newt holds out `val_set_size` rows of `datasets`; merge them or set val_set_size"),
    "early_stopping_patience": refused("training runs max_steps/num_epochs; evaluation gates (eval.thresholds) "
                                       "judge it after"),
    "load_best_model_at_end": refused("the trained stage keeps the last weights; gate them with eval.thresholds",
                                      False),
    "metric_for_best_model": refused("the trained stage keeps the last weights; gate them with eval.thresholds"),
    "lora_model_dir": refused("starting from an existing adapter is not supported; merge it into the base first"),
    "lora_target_parameters": refused("LoRA on raw parameters is not supported; target modules instead"),
    "peft_layers_to_transform": refused("not supported; target modules with a regex in lora_target_modules"),
    "lora_on_cpu": refused("not supported; remove it"),
    "gpu_memory_limit": refused("not supported; remove it"),
    "max_memory": refused("not supported; remove it"),
    "data_seed": refused("`seed` seeds the split, shuffling and training; remove it"),
    "dataset_shard_num": refused("not supported; select files with datasets[].data_files"),
    "dataset_shard_idx": refused("not supported; select files with datasets[].data_files"),
    "image_size": refused("set the size in the processor's preprocessor config"),
    "image_resize_algorithm": refused("set resampling in the processor's preprocessor config"),
    "mean_resizing_embeddings": refused("new embedding rows start as transformers initialises them", False),
    "shrink_embeddings": refused("not supported; remove it", False),
    "fix_untrained_tokens": refused("not supported; remove it"),
    "sequence_parallel_degree": refused("sequence parallelism is not supported", 1),
    "context_parallel_size": refused("context parallelism is not supported", 1),
    "tensor_parallel_size": refused("tensor parallelism is not supported", 1),
    "max_prompt_len": refused("preference rows are cut at sequence_len as a whole; remove it"),
    "dpo_use_weighting": refused("not supported; remove it"),
    "dpo_use_logits_to_keep": refused("not supported; remove it"),
    "rpo_alpha": refused("RPO's NLL term is not supported; remove it"),
    "bnb_config_kwargs": refused("newt's qlora is nf4 with double quantization; other settings are not supported"),
    "revision_of_model": refused("pin a model by downloading that revision and pointing base_model at the folder"),
    "tokenizer_legacy": refused("not supported; remove it"),
    "lr_quadratic_warmup": refused("not supported; remove it"),
    "embedding_lr": refused("a separate embedding learning rate is not supported; remove it"),
    "embedding_lr_scale": refused("a separate embedding learning rate is not supported; remove it"),
    "loraplus_lr_ratio": refused("LoRA+ is not supported; remove it"),
    "relora_steps": refused("ReLoRA is not supported; remove it"),
    "dataloader_drop_last": refused("newt trains on every row; remove it", False),
    "accelerator_config": refused("newt's launcher writes the accelerate settings; remove it"),
    "device_map": refused("newt places the model itself (one GPU per process); remove it", "auto"),
    "sample_packing_sequentially": refused("packing is first-fit over the shuffled rows; remove it", False),
    "curriculum_sampling": refused("rows are shuffled by seed (shuffle_merged_datasets); remove it", False),
    "batch_flattening": refused("use sample_packing (padding-free packed batches)", False),
    "pretraining_sample_concatenation": refused("use sample_packing", False),
    "min_sample_len": refused("short rows are not dropped by length; filter the data", 0),
    "heads_k_stride": refused("sequence parallelism is not supported", 1),
    "bench_split": refused("benchmarks run in the `evaluation` stage (eval.lm_eval_tasks)"),
    "greater_is_better": refused("the trained stage keeps the last weights; gate them with eval.thresholds"),
    "llama4_linearized_experts": refused("Axolotl's linearized Llama 4 experts are not supported; use the model as "
                                         "transformers loads it"),
    "qat": refused("quantization-aware training is not supported; quantize after training (quantize.outputs)"),
    "cosine_constant_lr_ratio": refused("a constant phase in the cosine schedule is not supported; use "
                                        "cosine_min_lr_ratio", 0),
    "model_quantization_config": refused("loading a quantized base other than qlora/load_in_8bit is not supported "
                                         "(an MXFP4 base with `dequantize: true` is read as the dequantized model)"),
    "tokenizer_use_mistral_common": refused("newt tokenizes with the model's transformers tokenizer; remove it"),
    "trackio_project_name": refused(_TRACKING),
    "trackio_run_name": refused(_TRACKING),
    "trackio_space_id": refused(_TRACKING),
}

# `datasets[]` entries
DATASET_KEYS: dict[str, Key] = {
    "message_field_role": applied("message_property_mappings.role",
                                  lambda v: {"message_property_mappings": {"role": v}} if v else {}),
    "message_field_content": applied("message_property_mappings.content",
                                     lambda v: {"message_property_mappings": {"content": v}} if v else {}),
    "trust_remote_code": noted("hub datasets are read as data files; no dataset script runs"),
    "conversation": refused("the fastchat `conversation` of the old sharegpt type is gone; use type chat_template "
                            "with the recipe's chat_template"),
    "chat_template": refused("one chat template per recipe: set chat_template at the top level",
                             "tokenizer_default"),
    "shards": refused("not supported; select files with data_files instead"),
    "shards_idx": refused("not supported; select files with data_files instead"),
    "preprocess_shards": refused("not supported; remove it"),
    "drop_system_message": refused("not supported; remove the system turns from the data"),
    "train_on_eot": refused("use train_on_eos (newt counts the end-of-turn marker as the turn's end)"),
    "message_field_training": refused("per-message training flags are not supported; use roles_to_train"),
    "message_field_training_detail": refused("per-message training flags are not supported; use roles_to_train"),
    "revision": refused("pinning a hub dataset revision is not supported yet; newt keys the data by the commit "
                        "it read"),
    "field_thinking": refused("reasoning fields of messages are not passed to the template; put the reasoning in "
                              "the message content"),
    "template_thinking_key": refused("reasoning fields of messages are not passed to the template; put the "
                                     "reasoning in the message content"),
    "field_system": refused("a system column is not supported; put the system turn in the messages"),
}

# `trl:` section keys newt's TrlConfig does not have
TRL_KEYS: dict[str, Key] = {
    "beta": applied("rl_beta"),
    "log_completions": noted("logging only"),
    "num_completions_to_print": noted("logging only"),
    "vllm_server_host": noted("newt's GRPO generates colocated; no server"),
    "vllm_server_port": noted("newt's GRPO generates colocated; no server"),
    "vllm_server_timeout": noted("newt's GRPO generates colocated; no server"),
    "vllm_mode": refused("newt's GRPO generates colocated (use_vllm: true)", "colocate"),
}

# ChatML as Axolotl's `chat_template: chatml` renders it (the published format: `<|im_start|>role\ncontent<|im_end|>`).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Axolotl's `chat_template` names whose template TRL ships under another name (newt.templates reads TRL's files).
CHAT_TEMPLATE_NAMES = {
    "qwen_25": "qwen2_5",
    "phi_3": "phi3",
    "phi_35": "phi3_5",
    "qwen2_vl": "qwen2_5_vl",
    "deepseek_v3": "deepseekv3",
    "llama3_2": "llama3_2",
}
