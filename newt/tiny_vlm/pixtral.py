"""Pixtral (mistral-community/pixtral-12b: the LLaVA architecture with a Pixtral vision tower and a Mistral text
model): each image is rows of `[IMG]` × (width / 16) closed by `[IMG_BREAK]`, the last row by `[IMG_END]`, and the
model reads the image at its own size (`image_sizes`). Turns are Mistral's `[INST] … [/INST]` + answer + `</s>`.

Template: mistral-common's own generator (`generate_chat_template`, tokenizer v3 with images: Pixtral-12B-2409's
tekken tokenizer, mistral-common's `tekken_240911.json`). Control tokens: mistral-common's `Tekkenizer`
control-token table (ranks 0–19: `<unk>`, `<s>`, `</s>`, `[INST]`, `[/INST]`, …, `[IMG]`, `<pad>`, `[IMG_BREAK]`,
`[IMG_END]`, …, `[SYSTEM_PROMPT]`, `[/SYSTEM_PROMPT]`, `[TOOL_CONTENT]`), in that order after the byte tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from newt.tiny_vlm import building

IMAGE_SIZE = 32  # (32 / 16)² patches: [IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END]
PATCH = 16


def mistral_template(version: str) -> str:
    """The chat template mistral-common generates for a tekken tokenizer of `version` with image support."""
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion

    return generate_chat_template(spm=False, tokenizer_version=TokenizerVersion(version), image_support=True,
                                  audio_support=False, thinking_support=False, default_system_prompt=None,
                                  plain_thinking_support=False, use_special_token_variables=True,
                                  model_settings_fields=None, reasoning_effort_values=None,
                                  reasoning_effort_default=None)


def mistral_tokenizer(template: str) -> Any:
    """The tiny tokenizer with tekken's control tokens; BOS `<s>`, EOS `</s>`, PAD `<pad>` as Mistral's HF
    tokenizers set them."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    control = [str(t["token_str"]) for t in sorted(Tekkenizer.DEPRECATED_SPECIAL_TOKENS, key=lambda t: t["rank"])]
    return building.tokenizer(control, template, eos="</s>", pad="<pad>", bos="<s>")


def processor(template: str, *, image_size: int, patch: int, merge: int) -> Any:
    from transformers import PixtralImageProcessor, PixtralProcessor

    # The image processor keeps the tower's patch size, as Mistral's checkpoints save it; the processor itself
    # resizes to multiples of patch × spatial_merge_size (PixtralProcessor passes that at call time).
    images = PixtralImageProcessor(patch_size={"height": patch, "width": patch}, size={"longest_edge": image_size})
    return PixtralProcessor(image_processor=images, tokenizer=mistral_tokenizer(template), patch_size=patch,
                            spatial_merge_size=merge, chat_template=template)


def vision_config(image_size: int, patch: int) -> dict:
    return {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": image_size, "patch_size": patch, "hidden_act": "silu"}


def build(out: Path) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    template = mistral_template("v3")
    proc = processor(template, image_size=IMAGE_SIZE, patch=PATCH, merge=1)
    tok = proc.tokenizer
    text = {**building.text_config(tok, sliding_window=None), "model_type": "mistral"}
    # pixtral-12b's config.json: vision_feature_select_strategy "full" (every patch feature, no CLS), layer -1.
    config = LlavaConfig(vision_config=vision_config(IMAGE_SIZE, PATCH), text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), projector_hidden_act="gelu",
                         vision_feature_select_strategy="full", vision_feature_layer=-1)
    building.save(LlavaForConditionalGeneration, config, proc, out)
