"""Gemma 4: a ViT over variable-size patch sequences (2-D positions, padded to the patch budget) → k×k pooling →
Gemma 4 text model; each image is `<|image>` + `<|image|>` × its soft-token count + `<image|>`; turns are
`<|turn>user|model\\n … <turn|>`. Template: TRL's gemma4_v5.jinja (google/gemma-4-E2B-it's chat template at its
current revision). Token names as google/gemma-4's tokenizer_config.json (`image_token`, `boi_token`, ...; the
processor requires the audio ones even for images); generation stops at `<eos>`, `<turn|>` or `<|tool_response>`
(transformers' Gemma 4 conversion script: eos_token_id = [eos, eot_token, str_token])."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

# The image processor fits each image into max_soft_tokens × pooling² patches (70 is the smallest budget it
# accepts): a 48-pixel square at 2-pixel patches is 24 × 24 patches, pooled 3 × 3 into 8 × 8 = 64 soft tokens.
IMAGE_SIZE = 48
PATCH = 2
POOLING = 3
MAX_SOFT_TOKENS = 70
TOKENS = ["<pad>", "<eos>", "<bos>", "<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
          "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>',
          "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>", "<|video|>"]
NAMED = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>", "audio_token": "<|audio|>",
         "boa_token": "<|audio>", "eoa_token": "<audio|>", "sot_token": "<|turn>", "eot_token": "<turn|>",
         "soc_token": "<|channel>", "eoc_token": "<channel|>", "think_token": "<|think|>",
         "escape_token": '<|"|>', "str_token": "<|tool_response>", "etr_token": "<tool_response|>",
         "stc_token": "<|tool_call>", "etc_token": "<tool_call|>", "std_token": "<|tool>", "etd_token": "<tool|>"}


def build(out: Path) -> None:
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessorPil,
        Gemma4Processor,
        Gemma4VideoProcessor,
    )

    template = building.trl_template("gemma4_v5")
    tok = building.tokenizer(TOKENS, template, eos="<eos>", pad="<pad>", bos="<bos>", extra=NAMED)
    vision_sizes = {"patch_size": PATCH, "pooling_kernel_size": POOLING, "max_soft_tokens": MAX_SOFT_TOKENS}
    processor = Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                                image_processor=Gemma4ImageProcessorPil(**vision_sizes),
                                video_processor=Gemma4VideoProcessor(**vision_sizes, num_frames=2),
                                tokenizer=tok, chat_template=template, image_seq_length=MAX_SOFT_TOKENS)
    text = building.text_config(tok, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                                global_head_dim=16, vocab_size_per_layer_input=len(tok),
                                hidden_size_per_layer_input=8)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16, "patch_size": PATCH, "pooling_kernel_size": POOLING,
              "position_embedding_size": 64}
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image|>"), ("boi_token_id", "<|image>"), ("eoi_token_id", "<image|>"),
        ("video_token_id", "<|video|>"), ("audio_token_id", "<|audio|>"), ("boa_token_id", "<|audio>"),
        ("eoa_token_index", "<audio|>"))}
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None, tie_word_embeddings=False,
                          **ids)
    building.save(Gemma4ForConditionalGeneration, config, processor, out,
                  stop_tokens=("<turn|>", "<|tool_response>"))
