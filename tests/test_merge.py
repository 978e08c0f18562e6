"""The merged stage: a self-contained safetensors folder, byte-identical on every run; QLoRA merges into the
dequantized NF4 base; a full fine-tune passes through."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from newt.merge import merge, qlora_base_config
from newt.models import load_model, load_tokenizer, resolve

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
MERGED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja"}


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def base() -> str:
    return resolve("builtin:tiny-llama")


def make_adapter(base: str, trained: Path, *, random_b: bool, quantized: bool = False) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    kwargs = {"quantization_config": qlora_base_config(torch.float32)} if quantized else {}
    model = load_model(base, dtype=torch.float32, **kwargs)
    # init_lora_weights=False: random A and B, so the merge visibly changes every wrapped weight
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                            init_lora_weights=not random_b))
    peft.save_pretrained(str(trained / "adapter"))
    load_tokenizer(base).save_pretrained(str(trained / "adapter"))
    return trained


def test_lora_merge_is_self_contained_and_byte_identical(base: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = make_adapter(base, tmp_path / "trained", random_b=True)
    meta = merge(base, trained, tmp_path / "a", chat_template=TEMPLATE)
    merge(base, trained, tmp_path / "b", chat_template=TEMPLATE)
    merge(base, trained, tmp_path / "a", chat_template=TEMPLATE)  # again into the same folder
    assert set(meta["files"]) == MERGED_FILES == {p.name for p in (tmp_path / "a").iterdir()}
    assert digests(tmp_path / "a") == digests(tmp_path / "b")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "a")  # plain transformers, no PEFT
    reference = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), str(trained / "adapter"))
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged(ids).logits, load_model(base, dtype=torch.float32)(ids).logits)
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tok.chat_template == TEMPLATE
    assert merged.generation_config.eos_token_id == tok.eos_token_id


def test_merge_dtype_is_the_saved_dtype(base: str, tmp_path: Path) -> None:
    from safetensors import safe_open

    trained = make_adapter(base, tmp_path / "trained", random_b=True)
    merge(base, trained, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118


def test_qlora_merge_dequantizes_the_nf4_base(base: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    # B = 0: the adapter adds nothing, so the merged weights are exactly the base as QLoRA training saw it
    trained = make_adapter(base, tmp_path / "trained", random_b=False, quantized=True)
    meta = merge(base, trained, tmp_path / "out", adapter="qlora")
    assert meta["dequantized_from"].startswith("nf4")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert getattr(merged.config, "quantization_config", None) is None  # a plain float model
    seen = load_model(base, dtype=torch.float32, quantization_config=qlora_base_config(torch.float32)).dequantize()
    original = load_model(base, dtype=torch.float32)
    w = merged.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(w, seen.model.layers[0].self_attn.q_proj.weight, atol=0, rtol=0)
    assert not torch.equal(w, original.model.layers[0].self_attn.q_proj.weight)
    # not quantized by NF4: embeddings stay exact
    assert torch.equal(merged.model.embed_tokens.weight, original.model.embed_tokens.weight)


def test_full_finetune_passes_through(base: str, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    load_model(base, dtype=torch.float32).save_pretrained(str(trained / "model"))
    load_tokenizer(base).save_pretrained(str(trained / "model"))
    meta = merge(base, trained, tmp_path / "out", adapter=None, chat_template=TEMPLATE)
    assert meta["merged_from"].startswith("full fine-tune")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (trained / "model" / "model.safetensors").read_bytes()
    assert load_tokenizer(str(tmp_path / "out")).chat_template == TEMPLATE


def test_missing_trained_output_says_what_to_do(base: str, tmp_path: Path) -> None:
    (tmp_path / "trained").mkdir()
    with pytest.raises(FileNotFoundError, match="re-materialize the trained stage"):
        merge(base, tmp_path / "trained", tmp_path / "out")
