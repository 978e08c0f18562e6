"""Qwen2-VL: ViT (patch 14, 2x2 merge) → Qwen2 with multimodal RoPE; `<|image_pad|>` per merged patch between
`<|vision_start|>`/`<|vision_end|>`; ChatML turns. Template: TRL's qwen2_5_vl.jinja (Qwen2-VL's tokenizer ships
none; the 2.5 template is the same ChatML with image placeholders)."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # (56 / 14)² patches, merged 2x2: 4 image tokens
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def qwen_tokenizer(template: str):
    return building.tokenizer(QWEN_TOKENS, template, eos="<|im_end|>", pad="<|endoftext|>",
                              extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                     "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})


def qwen_image_processor(cls_name: str = "Qwen2VLImageProcessorPil", patch: int = 14):
    import transformers

    pixels = IMAGE_SIZE * IMAGE_SIZE
    return getattr(transformers, cls_name)(size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch,
                                           merge_size=2, temporal_patch_size=2)


def build(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    template = building.trl_template("qwen2_5_vl")
    tok = qwen_tokenizer(template)
    processor = Qwen2VLProcessor(image_processor=qwen_image_processor(), tokenizer=tok, chat_template=template)
    text = building.text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                      "rope_theta": 10000.0})
    vision = {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": text["hidden_size"],
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                           video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                           vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                           vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    building.save(Qwen2VLForConditionalGeneration, config, processor, out)
