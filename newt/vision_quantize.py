"""Quantizing a vision-language (or audio-language) model: torchao weight-only quantization of the language model's
linear layers; the vision (audio) tower and the projector stay in full precision, because their few weights carry
every image feature and weight-only int8/int4 saves little there.

`newt.quantize.quantize` and `load_quantized` hand a merged folder that has a processor (processor_config.json or
preprocessor_config.json) to this module. Only the torchao methods apply: bitsandbytes' and GGUF's paths are
causal-LM only (llama.cpp has no loader for these architectures' towers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
METHODS = ("int8_weight_only", "int4_weight_only")


def is_multimodal(model_dir: Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in PROCESSOR_FILES)


def full_precision_modules(config: Any) -> list[str]:
    """Names of the modules outside the language model (vision/audio tower, projector), found on an empty (meta)
    instance of the architecture: every sibling branch on the path from the root to the language model."""
    import torch
    from transformers import AutoModelForMultimodalLM

    with torch.device("meta"):
        model = AutoModelForMultimodalLM.from_config(config)
    decoder = model.get_decoder()
    path = next(name for name, module in model.named_modules() if module is decoder)
    keep, prefix = [], ""
    for part in path.split("."):
        parent = model.get_submodule(prefix.rstrip(".")) if prefix else model
        keep += [prefix + name for name, _ in parent.named_children() if name != part and name != "lm_head"]
        prefix += part + "."
    return sorted(keep)


def quantize_multimodal(model_dir: Path, out_dir: Path, method: str, device: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor

    from newt.export import QuantizeError
    from newt.models import tokenizer_kwargs
    from newt.quant_backends import check_device, is_quantized, library_version, quantization_config

    config = AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or [config.model_type])[0]
    if method not in METHODS:
        raise QuantizeError(
            f"quantize method {method!r} does not support the vision-language architecture {architecture!r}: "
            f"newt quantizes multimodal models with torchao ({', '.join(METHODS)}), keeping the vision tower in "
            "full precision; use quantize.outputs: [int8_weight_only]"
        )
    check_device(method, device)
    keep = full_precision_modules(config)
    quantization_config, dtype = quantization_config(method, config.get_text_config())
    quantization_config.modules_to_not_convert = keep
    model = AutoModelForMultimodalLM.from_pretrained(model_dir, quantization_config=quantization_config,
                                                          dtype=dtype, device_map=device)
    quantized = [name for name, module in model.named_modules() if is_quantized(module)]
    outside = [n for n in quantized if any(n == k or n.startswith(k + ".") for k in keep)]
    if not quantized or outside:
        raise QuantizeError(f"quantize method {method!r} on {architecture!r}: quantized {len(quantized)} layers, "
                            f"{len(outside)} of them outside the language model ({', '.join(outside[:3])})")
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(model_dir, **tokenizer_kwargs(model_dir)).save_pretrained(out_dir)
    return {
        "architecture": architecture,
        "quantized_modules": len(quantized),
        "full_precision_modules": keep,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "weight_dtype": {"int8_weight_only": "int8", "int4_weight_only": "int4"}[method],
        "library": library_version(method),
        "torch": torch.__version__,
    }


def load_multimodal(out_dir: Path, method: str) -> tuple[Any, Any]:
    """(model, processor) of a quantized multimodal folder."""
    from transformers import AutoModelForMultimodalLM

    from newt.models import load_processor

    device_map = "cuda" if method == "int4_weight_only" else "cpu"
    model = AutoModelForMultimodalLM.from_pretrained(out_dir, device_map=device_map)
    model.eval()
    return model, load_processor(str(out_dir))


def method_of(out_dir: Path) -> str:
    return json.loads((Path(out_dir) / "quantize.json").read_text())["method"]
