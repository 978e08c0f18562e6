"""Built-in tiny models: a Llama-shaped model and tokenizer that newt builds offline, byte for byte the same on
every machine (fixed vocabulary, seeded initialisation), so demos and tests never touch the hub.

`base_model: builtin:tiny-llama` in a recipe resolves to the folder `ensure_builtin` returns; from then on the
ordinary `from_pretrained` path loads it like any local checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from newt.home import cache_dir

# Bump when the builder's output changes: it is part of the folder name, so old builds are never reused.
BUILDER_VERSION = "2"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML where a message's content may also be a list of parts ({"type": "text"|"image"}): an image part renders as
# the processor's placeholder, which the processor then expands to one token per image feature.
CHATML_VISION_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 512
    seed: int = 0
    # Vision-language (LLaVA-shaped: CLIP vision tower + projector + the Llama above) when set: the image side in
    # pixels; 14-pixel patches, so a 28-pixel image is 4 image tokens.
    image_size: int | None = None


BUILTINS = {
    # ~0.2 M parameters: big enough to learn the demo task on 2 CPU cores in about two minutes.
    "tiny-llama": TinySpec(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2),
    # The same language model behind a two-layer CLIP vision tower: a vision-language model that trains one step
    # on CPU in seconds (the multimodal path's end-to-end test).
    "tiny-llava": TinySpec(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, image_size=28),
    # ~30 M parameters (8 × (0.79 M attention + 2.95 M MLP)): where per-step compute, not per-call overhead,
    # decides a step's time on CPU (bench/iteration.py --small). Untrained, like the others until a recipe trains it.
    "small-llama": TinySpec(hidden_size=512, intermediate_size=1920, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=4),
}


def ensure_builtin(name: str) -> Path:
    """Build (once) and return the folder of a built-in model. Safe when several processes race."""
    from newt import tiny_vlm  # the vision-language families, one module each

    families = tiny_vlm.families()
    family = families.get(name.removeprefix("tiny-")) if name not in BUILTINS else None
    if name not in BUILTINS and family is None:
        known = sorted({*BUILTINS, *(f"tiny-{f}" for f in families)})
        raise ValueError(f"unknown built-in model {name!r}; built-ins: {', '.join(known)}")
    version = BUILDER_VERSION if family is None else f"{BUILDER_VERSION}.{tiny_vlm.BUILDER_VERSION}"
    target = cache_dir() / "builtin" / f"{name}-v{version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        family.build(tmp) if family is not None else build(BUILTINS[name], tmp)
        try:
            os.rename(tmp, target)  # atomic; loses to a concurrent builder that finished first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer():
    """Byte-level BPE over the 256 byte symbols with a single merge, plus ChatML special tokens and template.

    Almost every byte is one token: a real GPT-2/Qwen-style tokenizer (same pre-tokenizer and decoder), but small,
    needing no training and therefore identical everywhere. The one merge (two spaces) exists because llama.cpp
    refuses a byte-level BPE vocabulary with an empty merges list, and the tiny model must export to GGUF.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab["ĠĠ"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "Ġ")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build(spec: TinySpec, out: Path) -> None:
    if spec.image_size:
        return build_vision(spec, out)
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    _init_and_save(LlamaForCausalLM, _text_config(spec, tokenizer), tokenizer, tokenizer, spec.seed, out)


def build_vision(spec: TinySpec, out: Path) -> None:
    """LLaVA: CLIP vision tower → projector → Llama; a LlavaProcessor with a PIL CLIP image processor (no
    torchvision needed) that expands each `<image>` to (image_size / 14)² tokens."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = CHATML_VISION_TEMPLATE
    size = spec.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # num_additional_image_tokens=1: the CLIP tower's CLS feature, which the "default" strategy then drops.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN, chat_template=CHATML_VISION_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=size, patch_size=14, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(spec, tokenizer),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    _init_and_save(LlavaForConditionalGeneration, config, tokenizer, processor, spec.seed, out)


def _init_and_save(model_class, config, tokenizer, files, seed: int, out: Path) -> None:
    """Seeded weights, greedy generation that stops at the tokenizer's EOS, and the tokenizer (or processor) files."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    files.save_pretrained(out)


def _text_config(spec: TinySpec, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte→printable-character table (openai/gpt-2 encoder.py, MIT), the alphabet every
    # byte-level BPE (GPT-2, Llama 3, Qwen) uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
