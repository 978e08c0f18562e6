"""Recipe → the arguments of the training libraries: TrainingArguments (shared by every TRL config), the PEFT LoRA
config, the model-loading options and the kernels a recipe asks for. The one place that maps recipe keys (newt's and
Axolotl's, docs/migrating-from-axolotl.md) onto transformers/TRL/PEFT names; the children call it in a few lines.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from newt.config import Recipe
from newt.train.hardware import cuda_available

# liger_* recipe keys → the keyword of `_apply_liger_kernel_to_instance` (transformers' liger_kernel_config).
LIGER_KEYS = {
    "liger_rope": "rope",
    "liger_rms_norm": "rms_norm",
    "liger_layer_norm": "layer_norm",
    "liger_glu_activation": "swiglu",
    "liger_cross_entropy": "cross_entropy",
    "liger_fused_linear_cross_entropy": "fused_linear_cross_entropy",
}


def bf16_weights(recipe: Recipe, *, cuda: bool | None = None) -> bool:
    """`bf16: auto` is bf16 where the GPU supports it (Axolotl's reading), float32 on CPU and older GPUs."""
    if recipe.bf16 != "auto":
        return bool(recipe.bf16)
    cuda = cuda_available() if cuda is None else cuda
    if not cuda:
        return False
    import torch

    return torch.cuda.is_bf16_supported()


def _ratio(per_epoch: int | None, recipe: Recipe) -> float | None:
    """Axolotl's `saves_per_epoch`/`evals_per_epoch` as transformers' ratio of all steps (a float < 1)."""
    if not per_epoch:
        return None
    return min(1.0 / (per_epoch * recipe.num_epochs), 0.999) if not recipe.max_steps else 1.0 / per_epoch


def training_kwargs(recipe: Recipe, checkpoints: Path, *, has_eval: bool = False, cuda: bool | None = None
                    ) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config (SFTConfig, DPOConfig, KTOConfig, GRPOConfig, ORPO/CPO).
    `has_eval`: the child passes a held-out split, so evals_per_epoch/eval_steps evaluate it during training."""
    cuda = cuda_available() if cuda is None else cuda
    kwargs: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "per_device_train_batch_size": recipe.micro_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "num_train_epochs": recipe.num_epochs,
        "max_steps": recipe.max_steps or -1,
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler,
        # transformers reads a float < 1 as a share of all steps (Axolotl's warmup_ratio)
        "warmup_steps": recipe.warmup_ratio if recipe.warmup_ratio is not None else recipe.warmup_steps,
        "optim": recipe.optimizer,
        "weight_decay": recipe.weight_decay,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps",
        "save_steps": _ratio(recipe.saves_per_epoch, recipe) or recipe.save_steps,
        "save_total_limit": recipe.save_total_limit,
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": recipe.mixed_precision == "bf16",
        "fp16": recipe.mixed_precision == "fp16",
        "tf32": recipe.tf32 or None,
        "gradient_checkpointing": recipe.gradient_checkpointing,  # TRL defaults it on; we follow the recipe
        "gradient_checkpointing_kwargs": recipe.gradient_checkpointing_kwargs,
        "torch_compile": recipe.torch_compile,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False if recipe.num_processes * recipe.num_machines > 1 else None,
        # Several machines of their own (launcher local): each keeps checkpoints in its own work folder to resume
        # from. The Ray launcher's nodes share one work folder (docs/scaling.md): one writer per checkpoint.
        "save_on_each_node": recipe.num_machines > 1 and recipe.launcher == "local",
        "neftune_noise_alpha": recipe.neftune_noise_alpha,
    }
    if recipe.group_by_length:
        kwargs["train_sampling_strategy"] = "group_by_length"
    for key in ("max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(recipe, key) is not None:
            kwargs[key] = getattr(recipe, key)
    scheduler_kwargs = dict(recipe.lr_scheduler_kwargs)
    if recipe.cosine_min_lr_ratio is not None:
        kwargs["lr_scheduler_type"] = "cosine_with_min_lr"
        scheduler_kwargs["min_lr_rate"] = recipe.cosine_min_lr_ratio
    if scheduler_kwargs:
        kwargs["lr_scheduler_kwargs"] = scheduler_kwargs
    every = _ratio(recipe.evals_per_epoch, recipe) or recipe.eval_steps
    if every and has_eval:
        kwargs.update(eval_strategy="steps", eval_steps=every, per_device_eval_batch_size=recipe.micro_batch_size)
    liger = liger_config(recipe)
    if liger and cuda and importlib.util.find_spec("liger_kernel") is not None:
        kwargs.update(use_liger_kernel=True, liger_kernel_config=liger)
    return kwargs


def liger_config(recipe: Recipe) -> dict[str, bool]:
    """The Liger kernels the recipe switches on (the Liger plugin alone switches on Liger's defaults)."""
    from newt.axolotl.rules import plugin_kind

    chosen = {kernel: True for key, kernel in LIGER_KEYS.items() if getattr(recipe, key)}
    if not chosen and any(plugin_kind(p) == "LigerPlugin" for p in recipe.plugins):
        chosen = {"rope": True, "rms_norm": True, "swiglu": True, "fused_linear_cross_entropy": True}
    return chosen


def skipped_kernels(recipe: Recipe, *, cuda: bool | None = None) -> list[str]:
    """What the recipe asks for that this machine does not apply (the child logs each line)."""
    cuda = cuda_available() if cuda is None else cuda
    out = []
    if liger_config(recipe) and not (cuda and importlib.util.find_spec("liger_kernel") is not None):
        out.append("Liger kernels skipped: they need a CUDA GPU and the liger-kernel package "
                   "(pip install 'newt[gpu]'); training runs with the model's own layers")
    if wants_cut_cross_entropy(recipe) and not (cuda and importlib.util.find_spec("cut_cross_entropy") is not None):
        out.append("Cut Cross Entropy skipped: it needs a CUDA GPU and the cut-cross-entropy package "
                   "(pip install 'newt[gpu]'); the loss is computed with PyTorch's cross entropy")
    return out


def wants_cut_cross_entropy(recipe: Recipe) -> bool:
    from newt.axolotl.rules import plugin_kind

    return recipe.cut_cross_entropy or any(plugin_kind(p) == "CutCrossEntropyPlugin" for p in recipe.plugins)


def apply_cut_cross_entropy(recipe: Recipe, model: Any, *, cuda: bool | None = None) -> Any:
    """Cut Cross Entropy through its own public patch function, where it can run; the model unchanged elsewhere."""
    cuda = cuda_available() if cuda is None else cuda
    if not wants_cut_cross_entropy(recipe) or not cuda or importlib.util.find_spec("cut_cross_entropy") is None:
        return model
    from cut_cross_entropy.transformers import cce_patch

    return cce_patch(model)


def model_kwargs(recipe: Recipe, *, cuda: bool | None = None) -> dict[str, Any]:
    """`from_pretrained` options: dtype, attention kernel, bitsandbytes quantization (QLoRA 4-bit, 8-bit LoRA)."""
    import torch

    dtype = torch.bfloat16 if bf16_weights(recipe, cuda=cuda) else torch.float32
    # config attributes first: from_pretrained applies keyword arguments the config knows to the config
    kwargs: dict[str, Any] = {**recipe.model_config_overrides, "dtype": dtype,
                              "attn_implementation": recipe.attn_implementation}
    if recipe.adapter == "qlora":
        from transformers import BitsAndBytesConfig

        # nf4 with double quantization: the QLoRA paper's setting (Dettmers et al. 2023), as in Axolotl.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        )
    elif recipe.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return kwargs


def linear_module_names(model: Any) -> list[str]:
    """The short names of every linear layer but the output head (what Axolotl's lora_target_linear targets)."""
    import torch

    head = model.get_output_embeddings()
    names = set()
    for full, module in model.named_modules():
        # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear, so quantized bases count too
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def lora_kwargs(recipe: Recipe, model: Any = None, new_token_ids: list[int] | None = None) -> dict[str, Any]:
    """LoraConfig keywords. `lora_target_linear` with a module list needs the model (to list its linear layers);
    new tokens (special_tokens/tokens/eot_tokens) make the embedding and output head trained in full."""
    targets: Any = recipe.lora_target_modules
    if recipe.lora_target_linear:
        if isinstance(targets, list) and targets:
            if model is None:
                raise ValueError("lora_target_linear with a module list needs the model to list its linear layers")
            targets = sorted(set(linear_module_names(model)) | set(targets))
        else:
            targets = "all-linear"
    to_save = list(recipe.lora_modules_to_save)
    if new_token_ids and model is not None:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            name = next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is module), None)
            if name and name not in to_save:
                to_save.append(name)
    return {
        "r": recipe.lora_r, "lora_alpha": recipe.lora_alpha, "lora_dropout": recipe.lora_dropout,
        "target_modules": targets, "modules_to_save": to_save or None, "fan_in_fan_out": recipe.lora_fan_in_fan_out,
        "use_dora": recipe.peft_use_dora, "use_rslora": recipe.peft_use_rslora, "task_type": "CAUSAL_LM",
    }


def finish_model(recipe: Recipe, tokenizer: Any, model: Any, log: Any) -> tuple[Any, list[int]]:
    """The child's step after loading the base: vocabulary changes (embeddings resized), Cut Cross Entropy where
    it runs, and a log line for each kernel this machine skips. Returns (model, ids new to the vocabulary)."""
    from newt.tokens import prepare_tokens

    new_ids = prepare_tokens(recipe, tokenizer, model)
    if recipe.unfrozen_parameters and recipe.adapter is None:
        log(f"unfrozen_parameters: {freeze_except(model, recipe.unfrozen_parameters)} parameter tensors train")
    elif recipe.unfrozen_parameters:
        log("unfrozen_parameters: not used with an adapter (the adapter decides what trains)")
    if new_ids:
        log(f"added {len(new_ids)} tokens to the vocabulary (ids {new_ids[0]}..{new_ids[-1]}); embeddings resized")
    for line in skipped_kernels(recipe):
        log(line)
    return apply_cut_cross_entropy(recipe, model), new_ids


def held_out(recipe: Recipe, data: Path, columns: list[str] | None = None) -> Any:
    """The prepared validation split when the recipe evaluates during training (evals_per_epoch/eval_steps) and
    there are held-out rows; None otherwise."""
    if not (recipe.evals_per_epoch or recipe.eval_steps):
        return None
    from newt.prepare import load_prepared

    split = load_prepared(data, "validation")
    if len(split) == 0:
        return None
    return split.select_columns([c for c in columns if c in split.column_names]) if columns else split


def freeze_except(model: Any, patterns: list[str]) -> int:
    """Axolotl's `unfrozen_parameters` for a full fine-tune: only parameters whose name matches one of the regexes
    (re.match, as Axolotl) keep requires_grad; returns how many parameter tensors stay trainable."""
    import re

    compiled = [re.compile(p) for p in patterns]
    kept = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(c.match(name) for c in compiled)
        kept += param.requires_grad
    if not kept:
        raise ValueError(f"unfrozen_parameters: {patterns} match no parameter of the model; every parameter would "
                         "be frozen. Fix the regexes (they are matched against names like model.layers.0.mlp...)")
    return kept


def callbacks(recipe: Recipe) -> list[Any]:
    """Trainer callbacks the recipe asks for besides the metrics stream (loss_watchdog_*)."""
    return [LossWatchdog(recipe.loss_watchdog_threshold, recipe.loss_watchdog_patience)] \
        if recipe.loss_watchdog_threshold is not None else []


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class LossWatchdog(_callback_base()):  # type: ignore[misc]
    """Axolotl's loss watchdog: the loss above `threshold` for `patience` logged steps in a row fails the run
    (a diverged run stops instead of spending its budget), with a message naming the keys."""

    def __init__(self, threshold: float, patience: int):
        self.threshold = threshold
        self.patience = patience
        self.over = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        self.over = self.over + 1 if float(loss) > self.threshold else 0
        if self.over >= self.patience:
            raise RuntimeError(f"loss_watchdog: loss {float(loss):.4f} stayed above loss_watchdog_threshold "
                               f"{self.threshold} for {self.patience} logged steps (step {state.global_step}); "
                               "lower learning_rate or raise the threshold")
