"""Qwen3-VL: a SigLIP-2-style ViT over 16-pixel patches (learned position embeddings interpolated to the grid,
2×2 merge) whose intermediate features are also added to the first text layers ("DeepStack") → Qwen3 text model
with interleaved M-RoPE (positions from `image_grid_thw` and the processor's `mm_token_type_ids`). Images are
`<|vision_start|>` + `<|image_pad|>` × n + `<|vision_end|>`; turns are ChatML, no default system turn.

Template: TRL's qwen3_vl.jinja (Qwen/Qwen3-VL chat template). Tokens: Qwen3-VL's tokenizer_config.json added
tokens; generation stops at `<|im_end|>` or `<|endoftext|>` (Qwen/Qwen3-VL-2B-Instruct generation_config.json:
eos_token_id [151645, 151643])."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building, qwen2_5_vl, qwen2_vl

IMAGE_SIZE = 64  # (64 / 16)² = 16 patches, merged 2×2 → 4 `<|image_pad|>` tokens
TOKENS = [*qwen2_5_vl.TOKENS, "<tool_response>", "</tool_response>", "<think>", "</think>"]


def build(out: Path) -> None:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    template = building.trl_template("qwen3_vl")
    tok = qwen2_vl.qwen_tokenizer(template, TOKENS)
    # Qwen3-VL's preprocessor_config.json: Qwen2-VL's image processor with 16-pixel patches, mean = std = 0.5.
    size = {"shortest_edge": IMAGE_SIZE**2, "longest_edge": IMAGE_SIZE**2}
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    images = Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, **norm)
    videos = Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, **norm)
    processor = Qwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                 chat_template=template)
    text = building.text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    # One ViT block, whose features also feed the first text layer (deepstack_visual_indexes); a 4×4 grid of
    # learned position embeddings.
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "out_hidden_size": building.TEXT["hidden_size"], "patch_size": 16, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **qwen2_vl.token_ids(tok))
    building.save(Qwen3VLForConditionalGeneration, config, processor, out, stop_tokens=("<|endoftext|>",))
