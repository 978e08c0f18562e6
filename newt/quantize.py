"""The quantize/export stage: turn a merged Hugging Face model folder into one quantised, reloadable folder.

One method per output folder. Every folder holds the weights, the tokenizer files and `quantize.json` (the method
and the metadata `quantize` returns), so `load_quantized` needs nothing else:

| method            | library            | runs on        | weights file                          |
|-------------------|--------------------|----------------|---------------------------------------|
| int8_weight_only  | torchao            | CPU, CUDA      | model.safetensors (+ config.json)     |
| int4_weight_only  | torchao            | CUDA only      | model.safetensors (+ config.json)     |
| bnb_8bit          | bitsandbytes       | CPU, CUDA      | model.safetensors (+ config.json)     |
| bnb_4bit (nf4)    | bitsandbytes       | CPU, CUDA      | model.safetensors (+ config.json)     |
| gguf_f16          | gguf (newt writer) | anywhere       | model.gguf                            |
| gguf_q8_0         | gguf (newt writer) | anywhere       | model.gguf                            |

The torchao and bitsandbytes methods go through transformers' `quantization_config` so the saved `config.json`
carries what `from_pretrained` needs to rebuild the quantised layers; both save as safetensors. GGUF is llama.cpp's
single-file format: weights, hyperparameters and tokenizer in one file (see `newt.export.gguf`).

Heavy imports (torch, transformers, torchao, bitsandbytes, gguf) happen inside the functions, so importing this
module stays cheap for the pipeline definitions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_args

from newt.config import QuantizeMethod
from newt.export import QuantizeError
from newt.stage import StageRun

Method = QuantizeMethod  # the schema declares the methods once
METHODS: tuple[str, ...] = get_args(QuantizeMethod)
from newt.quant_backends import (  # how each method runs, shared with newt.vision_quantize
    check_device as _check_device,
    is_quantized as _is_quantized,
    library_version as _library_version,
    quantization_config as _quantization_config,
)
from newt.vision_quantize import is_multimodal, load_multimodal, quantize_multimodal

GGUF_FILE = "model.gguf"
USES_LIBRARIES = ("bitsandbytes",)  # the bnb methods run through transformers' BitsAndBytesConfig (newt.codeversion)
INFO_FILE = "quantize.json"
# Everything a tokenizer may be saved as; copied beside the quantised weights when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tekken.json",  # mistral-common's tokenizer (Voxtral)
)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")


def quantize(model_dir: Path, out_dir: Path, method: str, *, device: str = "cpu") -> dict:
    """Quantise the merged model in `model_dir` with `method` into `out_dir`; return JSON-serialisable metadata.

    `device` is where quantisation runs ("cpu", "cuda", "cuda:0"); GGUF export ignores it (it is numpy only).
    Raises QuantizeError for an unknown method, an unsupported architecture, or a device the method cannot use.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if method not in METHODS:
        raise QuantizeError(f"unknown quantize method {method!r}; choose one of: {', '.join(METHODS)}")
    if not (model_dir / "config.json").is_file():
        raise QuantizeError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    out_dir.mkdir(parents=True, exist_ok=True)

    if method.startswith("gguf_"):
        from newt.export.gguf import write_gguf

        details = write_gguf(model_dir, out_dir / GGUF_FILE, gguf_type=method.removeprefix("gguf_"))
    elif is_multimodal(model_dir):  # vision-language: the language model only (newt/vision_quantize.py)
        details = quantize_multimodal(model_dir, out_dir, method, device)
    else:
        details = _quantize_with_transformers(model_dir, out_dir, method, device)
    _copy_tokenizer(model_dir, out_dir)

    info = {
        "method": method,
        "format": "gguf" if method.startswith("gguf_") else "safetensors",
        "device": "cpu" if method.startswith("gguf_") else device,
        "parameters": _parameter_count(model_dir),
        "source_dtype": _source_dtype(model_dir),
        "source_bytes": _weight_bytes(model_dir),
        "bytes": _weight_bytes(out_dir),
        **details,
    }
    info["compression"] = round(info["source_bytes"] / info["bytes"], 3) if info["bytes"] else None
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def load_quantized(out_dir: Path, method: str | None = None):
    """(model, tokenizer) from a folder `quantize` wrote, ready for `model.generate` (on CPU; int4 on CUDA).

    `method` defaults to the one recorded in the folder's quantize.json. GGUF folders load through transformers'
    GGUF reader, which dequantises to float32; the tokenizer always comes from the tokenizer files beside it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if method is None:
        info_file = out_dir / INFO_FILE
        if not info_file.is_file():
            raise QuantizeError(f"{out_dir} has no {INFO_FILE}; pass method= (one of {', '.join(METHODS)})")
        method = json.loads(info_file.read_text())["method"]
    if method not in METHODS:
        raise QuantizeError(f"unknown quantize method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "int4_weight_only" and not torch.cuda.is_available():
        raise QuantizeError(_int4_device_message("cpu"))
    if is_multimodal(out_dir):
        return load_multimodal(out_dir, method)  # (model, processor)

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if method.startswith("gguf_"):
        model = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    else:
        device_map = "cuda" if method == "int4_weight_only" else "cpu"
        from newt.models import auto_model_class  # a causal LM, or a reward model (rl: reward)

        model = auto_model_class(str(out_dir)).from_pretrained(out_dir, device_map=device_map)
    model.eval()
    return model, tokenizer


def _quantize_with_transformers(model_dir: Path, out_dir: Path, method: str, device: str) -> dict:
    import torch
    from transformers import AutoConfig

    from newt.models import auto_model_class

    _check_device(method, device)
    config = AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or [config.model_type])[0]
    if not architecture.endswith(("ForCausalLM", "ForSequenceClassification")):  # the latter: reward models
        raise QuantizeError(
            f"quantize method {method!r} does not support architecture {architecture!r}: newt quantises causal "
            "language models and reward models (architectures ending in ForCausalLM or ForSequenceClassification) only"
        )
    quantization_config, dtype = _quantization_config(method, config)
    model = auto_model_class(str(model_dir)).from_pretrained(
        model_dir, quantization_config=quantization_config, dtype=dtype, device_map=device
    )
    quantized = [name for name, module in model.named_modules() if _is_quantized(module)]
    if not quantized:
        raise QuantizeError(
            f"quantize method {method!r} found no linear layers to quantise in {architecture!r}"
        )
    model.save_pretrained(out_dir)  # safetensors: transformers' default, and both libraries support it here
    return {
        "architecture": architecture,
        "quantized_modules": len(quantized),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "weight_dtype": {
            "int8_weight_only": "int8",
            "int4_weight_only": "int4",
            "bnb_8bit": "int8",
            "bnb_4bit": "nf4",
        }[method],
        "library": _library_version(method),
        "torch": torch.__version__,
    }


def _copy_tokenizer(model_dir: Path, out_dir: Path) -> None:
    copied = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not copied:
        raise QuantizeError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    for name in copied:
        shutil.copyfile(model_dir / name, out_dir / name)
    # The GGUF reader builds the model config from the file, but generate() still reads eos/pad from here.
    if (model_dir / "generation_config.json").is_file() and not (out_dir / "generation_config.json").exists():
        shutil.copyfile(model_dir / "generation_config.json", out_dir / "generation_config.json")


def _parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                n = 1
                for dim in f.get_slice(name).get_shape():
                    n *= dim
                total += n
    return total


def _source_dtype(model_dir: Path) -> str | None:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")  # transformers 5 / 4 spelling


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)


def build(run: StageRun) -> dict[str, Any]:
    from newt.merge import model_dir

    method = run.recipe.quantize.variants()[run.extra.get("node", "quantized")]
    return quantize(model_dir(run.upstream["merged"]), Path(run.workdir) / "model", method)
