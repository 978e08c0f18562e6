"""Write a Llama-family Hugging Face checkpoint as one GGUF file (F16 or Q8_0) with the `gguf` package.

The `gguf` package has the writer, the tensor-name maps and the quantisers but no HF→GGUF converter; that lives in
llama.cpp's `convert_hf_to_gguf.py` (MIT), which is not on PyPI. This module does the small part of it that a
Llama-shaped model needs, and cites it where it follows it:

- q/k rows are permuted from HF's rotate-half layout back to llama.cpp's interleaved RoPE layout
  (`LlamaModel.permute`);
- the vocabulary is written the way `_set_vocab_gpt2`/`get_vocab_base` write it: every id up to `vocab_size`,
  added tokens typed CONTROL (special) or USER_DEFINED, missing ids as `[PAD{i}]` UNUSED, merges and special ids
  via `gguf.SpecialVocab`;
- 1-D tensors (norms) stay F32; 2-D weights become F16, or Q8_0 when their rows split into 32-value blocks;
- Llama 3.1 RoPE scaling becomes a `rope_freqs` tensor (`LlamaModel.generate_extra_tensors`).

Only byte-level BPE tokenizers are written (GPT-2, Llama 3, Qwen 2 pre-tokenizers): llama.cpp picks its
pre-tokenizer by name, and this module names it by reading the `tokenizer.json` pre-tokenizer rather than by
llama.cpp's hash of known vocabularies, which never matches a custom one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np

from newt.export import QuantizeError

GGUFType = Literal["f16", "q8_0"]

# HF architectures this writer converts, with the GGUF architecture llama.cpp loads them as.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}

# tokenizer.json pre-tokenizer split regexes → llama.cpp `tokenizer.ggml.pre` names (llama-vocab.cpp).
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_PRE_BY_SPLIT = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def write_gguf(model_dir: Path, out_path: Path, *, gguf_type: GGUFType) -> dict:
    """Convert the checkpoint in `model_dir` to `out_path`; return what was written (types, tensor count)."""
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    config = json.loads((model_dir / "config.json").read_text())
    method = f"gguf_{gguf_type}"
    gguf_arch = _check_architecture(config, method)
    weight_files = sorted(model_dir.glob("*.safetensors"))
    if not weight_files:
        raise QuantizeError(
            f"no *.safetensors weights in {model_dir}; the GGUF writer reads safetensors only"
        )

    # Tensor data spools to a temporary file as each tensor is converted, so memory holds one tensor at a time.
    writer = gguf.GGUFWriter(str(out_path), gguf_arch, use_temp_file=True)
    _add_hyperparameters(writer, config, gguf_type, name=model_dir.name)
    tokenizer_info = _add_tokenizer(writer, model_dir, config["vocab_size"], method)
    types, count = _add_tensors(writer, weight_files, config, gguf_arch, gguf_type)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"gguf_architecture": gguf_arch, "tensor_types": types, "tensors": count, **tokenizer_info}


def _check_architecture(config: dict, method: str) -> str:
    architectures = config.get("architectures") or [config.get("model_type", "?")]
    arch = architectures[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise QuantizeError(
            f"quantize method {method!r} does not support architecture {arch!r} "
            f"(model_type {config.get('model_type')!r}); it supports: {supported}. "
            "Pick int8_weight_only, bnb_8bit or bnb_4bit for this model, or convert it with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        raise QuantizeError(
            f"quantize method {method!r}: {arch} with rope_type {rope_type!r} is not supported by newt's GGUF "
            "writer (it writes plain and Llama 3 RoPE); convert this model with llama.cpp's convert_hf_to_gguf.py."
        )
    return SUPPORTED_ARCHITECTURES[arch]


def _rope(config: dict) -> dict:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); older configs `rope_scaling` + `rope_theta`.
    rope = dict(config.get("rope_scaling") or {})
    rope.update(config.get("rope_parameters") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def _llama3_rope_factors(config: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors llama.cpp applies for Llama 3.1+ RoPE scaling (its `rope_freqs` tensor).

    After llama.cpp convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors` (MIT); the same bands as
    transformers' `_compute_llama3_parameters`: high frequencies kept, low ones divided by `factor`, and a smooth
    interpolation between.
    """
    rope = _rope(config)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_hyperparameters(writer, config: dict, gguf_type: GGUFType, *, name: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _pre_tokenizer_name(tokenizer_json: dict, method: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for this tokenizer, read from its pre-tokenizer definition."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        if pattern in _PRE_BY_SPLIT:
            return _PRE_BY_SPLIT[pattern]
    raise QuantizeError(
        f"quantize method {method!r}: the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one newt's "
        "GGUF writer can name for llama.cpp; supported: byte-level BPE with the GPT-2, Llama 3 or Qwen 2 split. "
        "Convert this model with llama.cpp's convert_hf_to_gguf.py instead."
    )


def _add_tokenizer(writer, model_dir: Path, vocab_size: int, method: str) -> dict:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise QuantizeError(
            f"quantize method {method!r} needs {tokenizer_file} (a fast tokenizer) beside the weights"
        )
    tokenizer_json = json.loads(tokenizer_file.read_text())
    if tokenizer_json.get("model", {}).get("type") != "BPE":
        raise QuantizeError(
            f"quantize method {method!r}: tokenizer model {tokenizer_json.get('model', {}).get('type')!r} is not "
            "supported by newt's GGUF writer (byte-level BPE only)"
        )
    pre = _pre_tokenizer_name(tokenizer_json, method)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    # After llama.cpp convert_hf_to_gguf.py `get_vocab_base` (MIT).
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise QuantizeError(
            f"tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}"
        )
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        # llama.cpp refuses a gpt2 vocabulary without `tokenizer.ggml.merges`, and GGUFWriter cannot write an empty
        # array, so a BPE with no merges (every byte its own token) has no GGUF form.
        raise QuantizeError(
            f"quantize method {method!r}: {tokenizer_file} has no BPE merges; llama.cpp requires "
            "tokenizer.ggml.merges and the gguf package cannot write an empty list. Give the tokenizer at least one "
            "merge (any real BPE tokenizer has thousands)."
        )
    # Say explicitly whether BOS/EOS are added: llama.cpp's default for a gpt2 vocabulary differs between versions.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [
        tokenizer.bos_token_id
    ]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [
        tokenizer.eos_token_id
    ]
    if special.chat_template is None and isinstance(tokenizer.chat_template, str):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    return {
        "tokenizer_pre": pre,
        "merges": len(special.merges),
        "special_token_ids": dict(special.special_token_ids),
    }


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (MIT): HF rotate-half rows → interleaved pairs.
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_tensors(writer, weight_files: list[Path], config: dict, gguf_arch: str, gguf_type: GGUFType):
    """Add every tensor in llama.cpp's naming, layout and type; return ({type name: count}, tensor count)."""
    import gguf
    from safetensors import safe_open

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == gguf_arch)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    q8_block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    counts: dict[str, int] = {}
    for file in weight_files:
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed from rope.freq_base
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise QuantizeError(
                        f"newt's GGUF writer has no llama.cpp name for tensor {hf_name!r} in {file}"
                    )
                data = f.get_tensor(hf_name).float().numpy()  # via torch: numpy has no bfloat16
                if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute(data, heads)
                elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute(data, kv_heads)
                if data.ndim == 1:
                    qtype = gguf.GGMLQuantizationType.F32
                elif gguf_type == "q8_0" and data.shape[-1] % q8_block == 0:
                    qtype = gguf.GGMLQuantizationType.Q8_0
                else:
                    qtype = gguf.GGMLQuantizationType.F16
                if qtype == gguf.GGMLQuantizationType.Q8_0:
                    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                elif qtype == gguf.GGMLQuantizationType.F16:
                    writer.add_tensor(name, data.astype(np.float16))
                else:
                    writer.add_tensor(name, data.astype(np.float32))
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
    if _rope(config).get("rope_type") == "llama3":
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        writer.add_tensor(
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
            _llama3_rope_factors(config, head_dim),
        )
        counts["F32"] = counts.get("F32", 0) + 1
    return counts, sum(counts.values())
