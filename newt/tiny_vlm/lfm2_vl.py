"""LFM2-VL (LiquidAI/LFM2-VL, LFM2.5-VL: `Lfm2VlForConditionalGeneration`): a SigLIP2 NaFlex tower at the image's
own aspect ratio, pixel-unshuffled by 2 into a hybrid convolution + attention LFM2 text model; each image is
`<|image_start|>` + `<image>` × tokens + `<|image_end|>` (tiles add `<|img_row_R_col_C|>` headers and an
`<|img_thumbnail|>`; the tiny model does not split). Turns are ChatML: `<|im_start|>{role}\\n … <|im_end|>`.

Template: TRL's lfm2_2_5_vl.jinja (LiquidAI/LFM2.5-VL-3B chat template). Special tokens: LFM2's tokenizer
(`<|startoftext|>` BOS, `<|im_end|>` EOS, `<|pad|>`) and LFM2-VL's image tokens."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 64  # (64 / 16)² patches, unshuffled by 2 → 4 `<image>` tokens
PATCH = 16
TOKENS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tool_call_start|>",
          "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>", "<image>", "<|image_start|>",
          "<|image_end|>", "<|img_thumbnail|>"]


def build(out: Path) -> None:
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration, Lfm2VlImageProcessor, Lfm2VlProcessor

    template = building.trl_template("lfm2_2_5_vl")
    tok = building.tokenizer(TOKENS, template, eos="<|im_end|>", pad="<|pad|>", bos="<|startoftext|>")
    tokens = (IMAGE_SIZE // PATCH // 2) ** 2
    images = Lfm2VlImageProcessor(do_image_splitting=False, encoder_patch_size=PATCH, downsample_factor=2,
                                  min_image_tokens=tokens, max_image_tokens=tokens, tile_size=IMAGE_SIZE,
                                  size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Lfm2VlProcessor(image_processor=images, tokenizer=tok, chat_template=template)
    # One short-convolution layer, then one attention layer (LFM2 interleaves the two).
    text = {**building.text_config(tok, layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False),
            "model_type": "lfm2"}
    text.pop("head_dim")
    vision = {"model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": PATCH,
              "num_patches": (IMAGE_SIZE // PATCH) ** 2, "vision_use_head": False}
    config = Lfm2VlConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                          projector_hidden_size=64, downsample_factor=2, tie_word_embeddings=False)
    building.save(Lfm2VlForConditionalGeneration, config, processor, out)
