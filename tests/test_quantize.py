"""The quantize stage's torchao and bitsandbytes methods on the built-in tiny Llama, on CPU.

The tiny model stands in for a merged model. Its weights are a seeded random init, so its next-token logits are
nearly flat and any rounding eventually flips a near-tie: 8-bit methods are held to the same greedy tokens for a
short continuation plus near-identical logits, nf4 to close logits only.
"""

from __future__ import annotations

import json

import pytest
import torch

from newt.quantize import METHODS, QuantizeError, load_quantized, quantize

PROMPT = "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 8
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The tiny Llama's folder, built into a private cache so the test touches nothing outside tmp."""
    from newt.tiny import ensure_builtin

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEWT_CACHE_DIR", str(tmp_path_factory.mktemp("newt-cache")))
        return ensure_builtin("tiny-llama")


@pytest.fixture(scope="module")
def reference(merged):
    """(prompt ids, greedy continuation, logits) of the float model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    return ids, _greedy(model, ids), _logits(model, ids)


def _greedy(model, ids) -> list[int]:
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[0].float()


def _cosine(model, ids, reference_logits) -> torch.Tensor:
    """Per-position cosine similarity between this model's logits and the float model's."""
    return torch.nn.functional.cosine_similarity(_logits(model, ids), reference_logits, dim=-1)


def test_methods_are_the_recipe_values():
    assert METHODS == (
        "int8_weight_only",
        "int4_weight_only",
        "bnb_8bit",
        "bnb_4bit",
        "gguf_f16",
        "gguf_q8_0",
    )


def test_int8_weight_only_reloads_smaller_with_the_same_greedy_tokens(merged, reference, tmp_path):
    ids, tokens, logits = reference
    out = tmp_path / "int8"
    info = quantize(merged, out, "int8_weight_only")

    names = {p.name for p in out.iterdir()}
    assert (
        names
        == {"model.safetensors", "config.json", "generation_config.json", "quantize.json"} | TOKENIZER_FILES
    )
    assert info["method"] == "int8_weight_only" and info["format"] == "safetensors"
    assert info["bytes"] == (out / "model.safetensors").stat().st_size < info["source_bytes"]
    assert info["parameters"] == sum(p.numel() for p in _float_model(merged).parameters())
    assert info["quantized_modules"] == 14  # q, k, v, o, gate, up, down in each of 2 layers
    assert json.loads((out / "quantize.json").read_text()) == json.loads(json.dumps(info))
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"

    model, tokenizer = load_quantized(out)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == "Int8Tensor"  # reloaded quantised, not silently dequantised
    assert tokenizer(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert _greedy(model, ids) == tokens
    assert _cosine(model, ids, logits).min() > 0.999  # measured 0.99996


def test_bnb_8bit_round_trip_on_cpu(merged, reference, tmp_path):
    ids, tokens, logits = reference
    out = tmp_path / "bnb8"
    info = quantize(merged, out, "bnb_8bit")
    assert info["bytes"] < info["source_bytes"] and info["weight_dtype"] == "int8"

    model, _ = load_quantized(out)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear8bitLt"
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    assert _greedy(model, ids) == tokens
    assert _cosine(model, ids, logits).min() > 0.999  # measured 0.99992


def test_bnb_4bit_round_trip_on_cpu(merged, reference, tmp_path):
    ids, _, logits = reference
    out = tmp_path / "bnb4"
    info = quantize(merged, out, "bnb_4bit")
    assert info["bytes"] < info["source_bytes"] and info["weight_dtype"] == "nf4"
    assert (
        json.loads((out / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    )

    model, _ = load_quantized(out, "bnb_4bit")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    # nf4 moves a flat random model's argmax around, so compare logits only: measured min cosine 0.993.
    assert _cosine(model, ids, logits).min() > 0.98


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a CUDA machine int4 runs; this checks the CPU error"
)
def test_int4_weight_only_on_cpu_says_which_device_it_needs(merged, tmp_path):
    with pytest.raises(
        QuantizeError, match=r"'int4_weight_only' needs a CUDA GPU; it cannot run on device 'cpu'"
    ):
        quantize(merged, tmp_path / "int4", "int4_weight_only")
    assert not (tmp_path / "int4" / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torchao int4 weight-only needs CUDA")
def test_int4_weight_only_on_cuda(merged, reference, tmp_path):  # pragma: no cover - no GPU on CI machines
    ids, _, logits = reference
    info = quantize(merged, tmp_path / "int4", "int4_weight_only", device="cuda")
    assert info["weight_dtype"] == "int4"
    model, _ = load_quantized(tmp_path / "int4")
    cosine = torch.nn.functional.cosine_similarity(_logits(model, ids.cuda()).cpu(), logits, dim=-1)
    assert cosine.min() > 0.95


def test_unknown_method_lists_the_methods(merged, tmp_path):
    with pytest.raises(
        QuantizeError, match="unknown quantize method 'int3'.*int8_weight_only, int4_weight_only"
    ):
        quantize(merged, tmp_path / "x", "int3")


def test_missing_cuda_is_a_clear_error(merged, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(QuantizeError, match="device 'cuda' but torch sees no CUDA device"):
        quantize(merged, tmp_path / "x", "bnb_8bit", device="cuda")


def test_non_causal_lm_architecture_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(folder)
    with pytest.raises(
        QuantizeError, match=r"'bnb_8bit' does not support architecture 'BertModel'.*ForCausalLM"
    ):
        quantize(folder, tmp_path / "out", "bnb_8bit")


def _float_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)
