"""How each quantize method runs: the transformers quantization config that applies it, the devices it can run on,
whether a loaded module is quantized, and the library version that did it. Shared by the causal-LM path
(`newt.quantize`) and the vision-language one (`newt.vision_quantize`)."""

from __future__ import annotations

from newt.export import QuantizeError


def quantization_config(method: str, config):
    import torch

    source_dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(source_dtype, str):
        source_dtype = getattr(torch, source_dtype)
    if method == "int8_weight_only":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig()), source_dtype
    if method == "int4_weight_only":
        from torchao.quantization import Int4WeightOnlyConfig
        from transformers import TorchAoConfig

        # tinygemm's layout, the CUDA int4 kernel torch ships; it needs bfloat16 activations. Groups of 128 unless
        # the model is too narrow for them.
        group = next(
            g for g in (128, 64, 32) if config.hidden_size % g == 0 and config.intermediate_size % g == 0
        )
        quant = Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
        return TorchAoConfig(quant), torch.bfloat16
    from transformers import BitsAndBytesConfig

    if method == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True), source_dtype
    # nf4 is the 4-bit type QLoRA introduced and bitsandbytes recommends; compute in the model's own dtype.
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=source_dtype
    ), source_dtype


def check_device(method: str, device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QuantizeError(
            f"quantize method {method!r} was asked for device {device!r} but torch sees no CUDA device"
        )
    if method == "int4_weight_only" and not device.startswith("cuda"):
        raise QuantizeError(_int4_device_message(device))
    if not (device == "cpu" or device.startswith("cuda")):
        raise QuantizeError(
            f"quantize method {method!r}: device {device!r} is not supported; use 'cpu' or 'cuda'"
        )


def _int4_device_message(device: str) -> str:
    return (
        f"quantize method 'int4_weight_only' needs a CUDA GPU; it cannot run on device {device!r}. torchao's int4 "
        "weight-only kernels (tinygemm 'tile_packed_to_4d', mslk 'plain') are CUDA-only, and 'plain_int32' is for "
        "XPU/NPU. On CPU use 'bnb_4bit' or 'int8_weight_only', or 'gguf_q8_0' for llama.cpp."
    )


def is_quantized(module) -> bool:
    weight = getattr(module, "weight", None)
    kind = type(module).__name__
    return kind in ("Linear8bitLt", "Linear4bit") or (
        weight is not None and type(weight).__module__.startswith("torchao")
    )


def library_version(method: str) -> str:
    from importlib.metadata import version

    name = "torchao" if method.endswith("weight_only") else "bitsandbytes"
    return f"{name} {version(name)}"
