"""Gemma 3n: a timm MobileNetV5 tower (through `TimmWrapperModel`) whose multi-scale fusion adapter gives an
n × n grid of soft tokens → Gemma 3n text model (AltUp, LAuReL, per-layer inputs); the conformer audio tower is
built too (Gemma 3n's model always has one) but these tests give images only. Each image is
`\\n\\n<start_of_image>` + `<image_soft_token>` × n² + `<end_of_image>\\n\\n`; turns are Gemma's
`<start_of_turn>user|model\\n … <end_of_turn>`.

Template, token names and stop tokens: written from transformers' `models/gemma3n/convert_gemma3n_weights.py`,
the script that produced the google/gemma-3n-* checkpoints (its `_CHAT_TEMPLATE`: Gemma 3's with audio parts;
`image_token` / `boi_token` / `eoi_token` and the audio ones; eos_token_id [eos, `<end_of_turn>`]). As in the real
vocabulary, the vision tokens (`<end_of_image>`, `<image_soft_token>`) and then the audio tokens follow the text
vocabulary: ids from `vision_config.vocab_offset` on are embedded by the vision (audio) embedder, and the
per-layer inputs cover the text ids only.

The tower: timm's `mobilenetv5_300m_enc` at `channel_multiplier` 1/32 and a 2 × 2 output grid: all 84 blocks of
the real one, ≈3.7 M parameters (the multi-query attention blocks keep their heads and key width, and the fusion
adapter's 2048 output channels are fixed in timm). A shallower tower cannot be configured: `model_args` may carry
`block_args`, but timm's `EfficientNetBuilder` rewrites those dicts in place while it builds the tower (pops
`block_type`, adds layer classes), after which the model's config no longer saves as JSON."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 64  # the tower downsamples by 32: a 2 × 2 feature map, fused to the 2 × 2 output grid
GRID = 2
CHANNELS = 1 / 32  # timm rounds channels to multiples of 8
TEXT_TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<start_of_audio>"]
VISION_TOKENS = ["<end_of_image>", "<image_soft_token>"]  # the vision embedder's vocabulary, in order
AUDIO_TOKENS = ["<end_of_audio>", "<audio_soft_token>"]
TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def build(out: Path) -> None:
    from transformers import (
        Gemma3nAudioFeatureExtractor,
        Gemma3nConfig,
        Gemma3nForConditionalGeneration,
        Gemma3nProcessor,
        SiglipImageProcessorPil,
    )
    from transformers.image_utils import PILImageResampling

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
             "audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"}
    tok = building.tokenizer(TEXT_TOKENS + VISION_TOKENS + AUDIO_TOKENS, TEMPLATE, eos="<eos>", pad="<pad>",
                             bos="<bos>", extra=named)
    vision_offset = tok.convert_tokens_to_ids(VISION_TOKENS[0])
    audio_offset = tok.convert_tokens_to_ids(AUDIO_TOKENS[0])
    # as convert_gemma3n_weights.py builds it, at the tiny image size
    images = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=(0.5,) * 3,
                                     image_std=(0.5,) * 3, resample=PILImageResampling.BILINEAR,
                                     do_normalize=False)
    processor = Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(), image_processor=images,
                                 tokenizer=tok, chat_template=TEMPLATE, image_seq_length=GRID * GRID)
    text = building.text_config(tok, vocab_size_per_layer_input=vision_offset, hidden_size_per_layer_input=8,
                                laurel_rank=4, num_kv_shared_layers=0, sliding_window=64,
                                layer_types=["sliding_attention", "full_attention"])
    vision = {"architecture": "mobilenetv5_300m_enc", "vocab_size": len(VISION_TOKENS),
              "vocab_offset": vision_offset,
              "model_args": {"channel_multiplier": CHANNELS, "msfa_output_resolution": GRID}}
    audio = {"vocab_size": len(AUDIO_TOKENS), "vocab_offset": audio_offset, "hidden_size": 32,
             "conf_num_attention_heads": 2, "conf_num_hidden_layers": 1, "sscp_conv_channel_size": (8, 4)}
    config = Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio,
                           vision_soft_tokens_per_image=GRID * GRID, tie_word_embeddings=False,
                           image_token_id=tok.convert_tokens_to_ids("<image_soft_token>"),
                           boi_token_id=tok.convert_tokens_to_ids("<start_of_image>"),
                           eoi_token_id=vision_offset,
                           audio_token_id=tok.convert_tokens_to_ids("<audio_soft_token>"),
                           boa_token_id=tok.convert_tokens_to_ids("<start_of_audio>"), eoa_token_id=audio_offset)
    building.save(Gemma3nForConditionalGeneration, config, processor, out, stop_tokens=("<end_of_turn>",))
