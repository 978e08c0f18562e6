"""Whether a recipe's GPU settings can run on this machine, checked before anything is launched.

Each problem names the key, what it needs and the fix, and all are reported at once. The trained stage runs this
before launching the child (so a bad recipe fails in seconds, not after model loading) and the child runs it again
(it may be launched by hand, or in a pod with other packages).
"""

from __future__ import annotations

import importlib.util

from newt.config import Recipe


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_settings(recipe: Recipe, *, cuda: bool | None = None) -> list[str]:
    cuda = cuda_available() if cuda is None else cuda
    problems = []
    if recipe.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append(
                "attn_implementation: flash_attention_2 needs the flash-attn package, which is not installed; "
                "install the gpu extra (pip install 'newt[gpu]') on a CUDA machine, or use sdpa"
            )
        elif not cuda:
            problems.append("attn_implementation: flash_attention_2 runs on CUDA GPUs only; use sdpa on this machine")
    if recipe.tf32 and not (cuda and _ampere_or_newer()):
        problems.append("tf32: true needs an NVIDIA Ampere or newer GPU; set tf32: false on this machine")
    if recipe.mixed_precision == "fp16" and not cuda:
        problems.append("mixed_precision: fp16 autocast needs a CUDA GPU; use bf16 or no on CPU")
    if recipe.adapter == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("adapter: qlora needs bitsandbytes; pip install bitsandbytes (it is a newt dependency)")
    if recipe.trl.use_vllm and (not cuda or importlib.util.find_spec("vllm") is None):
        problems.append("trl.use_vllm: true needs a CUDA GPU and a vllm build matching the installed torch; "
                        "set it to false to generate with plain `generate`")
    from newt.train.args import hardware_problems  # issue 16: optimizers, 8-bit base

    problems += hardware_problems(recipe, cuda=cuda)
    if recipe.num_processes > 1 and recipe.accelerate_config is None and cuda:
        import torch

        if torch.cuda.device_count() < recipe.num_processes:
            problems.append(f"num_processes: {recipe.num_processes} but this machine has "
                            f"{torch.cuda.device_count()} GPU(s); lower num_processes")
    return problems


def _ampere_or_newer() -> bool:
    import torch

    return torch.cuda.get_device_capability()[0] >= 8
