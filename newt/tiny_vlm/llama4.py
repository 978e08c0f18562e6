"""Llama 4 (Scout/Maverick: `Llama4ForConditionalGeneration`): a ViT over 14-pixel patches whose features are
pixel-shuffled by 0.5 and projected into a mixture-of-experts text model; each image is `<|image_start|>` (tile
grid with `<|tile_x_separator|>` / `<|tile_y_separator|>` when tiled) `<|image|>` + `<|patch|>` × patches per tile
+ `<|image_end|>`, the features going to the `<|patch|>` positions. Turns are
`<|header_start|>{role}<|header_end|>\\n\\n … <|eot|>`.

Template: the Llama 4 Instruct chat template transformers ships as `Llama4Processor`'s default
(transformers.models.llama4.processing_llama4.chat_template, the meta-llama/Llama-4-Scout-17B-16E-Instruct
template). Special tokens: Llama 4's (tokenizer_config.json of the Llama 4 Instruct checkpoints); generation stops at
`<|eot|>`, `<|eom|>` or `<|end_of_text|>` (their generation_config.json)."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # one 56-pixel tile: (56 / 14)² patches, pixel-shuffled to 4 `<|patch|>` tokens
PATCH = 14
TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
          "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>", "<|python_start|>",
          "<|python_end|>", "<|finetune_right_pad|>", "<|image_start|>", "<|image_end|>", "<|tile_x_separator|>",
          "<|tile_y_separator|>", "<|image|>", "<|patch|>"]


def build(out: Path) -> None:
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4ImageProcessor, Llama4Processor
    from transformers.models.llama4.processing_llama4 import chat_template

    tok = building.tokenizer(TOKENS, chat_template, eos="<|eot|>", pad="<|finetune_right_pad|>",
                             bos="<|begin_of_text|>")
    images = Llama4ImageProcessor(max_patches=1, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Llama4Processor(image_processor=images, tokenizer=tok, patch_size=PATCH, pixel_shuffle_ratio=0.5,
                                chat_template=chat_template)
    # Every other layer a mixture of two experts (one routed), as Maverick interleaves dense and MoE layers.
    text = building.text_config(tok, intermediate_size=64, intermediate_size_mlp=128, num_local_experts=2,
                                num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=1024)
    # intermediate_size is also the pixel-shuffled feature width the projector MLP takes: hidden / 0.5² (as Scout's
    # 1408 → 5632).
    vision = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": IMAGE_SIZE, "patch_size": PATCH, "pixel_shuffle_ratio": 0.5, "vision_output_dim": 64,
              "projector_input_dim": 64, "projector_output_dim": 64}
    ids = tok.convert_tokens_to_ids
    config = Llama4Config(vision_config=vision, text_config=text, boi_token_index=ids("<|image_start|>"),
                          eoi_token_index=ids("<|image_end|>"), image_token_index=ids("<|patch|>"))
    building.save(Llama4ForConditionalGeneration, config, processor, out, stop_tokens=("<|eom|>", "<|end_of_text|>"))
