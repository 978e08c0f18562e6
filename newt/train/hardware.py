"""Whether a recipe's GPU settings can run on this machine, checked before anything is launched.

Each problem names the key, what it needs and the fix, and all are reported at once. The trained stage runs this
before launching the child (so a bad recipe fails in seconds, not after model loading) and the child runs it again
(it may be launched by hand, or in a pod with other packages). It imports neither transformers nor, unless a setting
needs to know whether there is a GPU, torch: in the stage's process they would cost seconds the child pays anyway.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from newt.config import Recipe


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_settings(recipe: Recipe, *, cuda: bool | None = None) -> list[str]:
    known = [cuda]

    def gpu() -> bool:  # asked only by settings that need a GPU (torch is imported then)
        if known[0] is None:
            known[0] = cuda_available()
        return known[0]

    problems = []
    if recipe.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append(
                "attn_implementation: flash_attention_2 needs the flash-attn package, which is not installed; "
                "install the gpu extra (pip install 'newt[gpu]') on a CUDA machine, or use sdpa"
            )
        elif not gpu():
            problems.append("attn_implementation: flash_attention_2 runs on CUDA GPUs only; use sdpa on this machine")
    if recipe.tf32 and not (gpu() and _ampere_or_newer()):
        problems.append("tf32: true needs an NVIDIA Ampere or newer GPU; set tf32: false on this machine")
    if recipe.mixed_precision == "fp16" and not gpu():
        problems.append("mixed_precision: fp16 autocast needs a CUDA GPU; use bf16 or no on CPU")
    if recipe.adapter == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("adapter: qlora needs bitsandbytes; pip install bitsandbytes (it is a newt dependency)")
    if recipe.trl.use_vllm and (importlib.util.find_spec("vllm") is None or not gpu()):
        problems.append("trl.use_vllm: true needs a CUDA GPU and a vllm build matching the installed torch; "
                        "set it to false to generate with plain `generate`")
    problems += _axolotl_problems(recipe, gpu)
    if recipe.num_processes > 1 and recipe.accelerate_config is None and gpu():
        import torch

        if torch.cuda.device_count() < recipe.num_processes:
            problems.append(f"num_processes: {recipe.num_processes} but this machine has "
                            f"{torch.cuda.device_count()} GPU(s); lower num_processes")
    return problems


# Optimizers of transformers' OptimizerNames that need a package besides torch (name prefix → import name), so
# the trained stage names a missing one before the model loads; the bitsandbytes ones are checked below.
OPTIMIZER_PACKAGES = {
    "galore_": "galore_torch", "apollo_": "apollo_torch", "lomo": "lomo_optim", "adalomo": "lomo_optim",
    "grokadamw": "grokadamw", "schedule_free_": "schedulefree", "stable_adamw": "optimi",
    "adamw_torch_4bit": "torchao", "adamw_torch_8bit": "torchao", "adamw_anyprecision": "torchdistx",
}


def _axolotl_problems(recipe: Recipe, gpu: Any) -> list[str]:
    """The Axolotl-derived settings (issue 16: optimizers, hub kernels, an 8-bit base) this machine cannot run."""
    problems = []
    optim = recipe.optimizer
    # bitsandbytes' optimizers (adamw_torch_8bit is torchao's and runs anywhere)
    bnb = ("8bit" in optim and "torch" not in optim) or "bnb" in optim
    if bnb or optim.startswith(("paged_", "lion_", "ademamix")):
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"optimizer: {optim} needs bitsandbytes, which is not installed; pip install "
                            "bitsandbytes, or use adamw_torch")
        elif not gpu():
            problems.append(f"optimizer: {optim} is a bitsandbytes optimizer and runs on CUDA GPUs only; use "
                            "adamw_torch on this machine")
    package = next((m for prefix, m in OPTIMIZER_PACKAGES.items() if optim.startswith(prefix)), None)
    if package is not None and importlib.util.find_spec(package) is None:
        problems.append(f"optimizer: {optim} needs the {package} package, which is not installed; install it, or "
                        "use adamw_torch")
    if "/" in recipe.attn_implementation and (importlib.util.find_spec("kernels") is None or not gpu()):
        problems.append(f"attn_implementation: {recipe.attn_implementation} is a hub kernel and needs a CUDA GPU and "
                        "the kernels package (pip install 'newt[gpu]'); use sdpa on this machine")
    if recipe.load_in_8bit and (importlib.util.find_spec("bitsandbytes") is None or not gpu()):
        problems.append("load_in_8bit: true needs a CUDA GPU and bitsandbytes; set it to false (plain LoRA) here")
    return problems


def _ampere_or_newer() -> bool:
    import torch

    return torch.cuda.get_device_capability()[0] >= 8
