"""Mistral 3 (Mistral Small 3.1/3.2: `Mistral3ForConditionalGeneration`): a Pixtral vision tower whose patch
features a patch merger joins 2 × 2 before the projector; images become `[IMG]` rows as in Pixtral, one token per
merged 28-pixel cell, at the image's own size (`image_sizes`). Turns are Mistral's V7-Tekken format:
`[SYSTEM_PROMPT] … [/SYSTEM_PROMPT]`, `[INST] … [/INST]` + answer + `</s>`.

Template: mistral-common's own generator for tokenizer v7 with images (Mistral Small 3.1's tekken tokenizer).
Control tokens: mistral-common's `Tekkenizer` table (see `newt.tiny_vlm.pixtral`)."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building
from newt.tiny_vlm.pixtral import mistral_template, processor, vision_config

# The test image is 42 pixels, not a multiple of the merged 28-pixel cell: the processor pads it to 56, so
# (56 / 14)² patches merged 2 × 2 are [IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END] (what makes a collator that asks the
# image processor alone, which pads to 42, fail).
IMAGE_SIZE = 42
MAX_SIZE = 56
PATCH = 14
MERGE = 2


def build(out: Path) -> None:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    template = mistral_template("v7")
    proc = processor(template, image_size=MAX_SIZE, patch=PATCH, merge=MERGE)
    tok = proc.tokenizer
    text = {**building.text_config(tok, sliding_window=None), "model_type": "mistral"}
    config = Mistral3Config(vision_config=vision_config(MAX_SIZE, PATCH), text_config=text,
                            image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=MERGE,
                            vision_feature_layer=-1, tie_word_embeddings=False)
    building.save(Mistral3ForConditionalGeneration, config, proc, out)
