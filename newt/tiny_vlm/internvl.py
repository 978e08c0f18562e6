"""InternVL 3 (OpenGVLab/InternVL3-*-hf: the transformers-native classes): InternViT tower → pixel shuffle (×0.5) →
MLP projector → Qwen2; each image tile is `<img>` + `<IMG_CONTEXT>` × image_seq_length + `</img>`; turns are
ChatML (`<|im_start|>{role}\\n … <|im_end|>`), an image part rendered as `<IMG_CONTEXT>\\n`.

Template and tokens: written from transformers' `models/internvl/convert_internvl_weights_to_hf.py`, the script
that produced the -hf repositories (its `chat_template`; the tokenizer is Qwen2.5-VL's with `<img>`, `</img>`,
`<IMG_CONTEXT>` added and named as `start_image_token` / `end_image_token` / `context_image_token`; EOS
`<|im_end|>`). No package ships this template."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # one 56-pixel tile: (56 / 14)² = 16 patches, pixel-shuffled by 0.5 → 4 image tokens
PATCH = 14
DOWNSAMPLE = 0.5
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def build(out: Path) -> None:
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tok = building.tokenizer(TOKENS, TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                             extra={"start_image_token": "<img>", "end_image_token": "</img>",
                                    "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    # As the -hf repositories: the image processor's own `crop_to_patches` is off and InternVLProcessor turns it
    # on; a square image is one tile, a 2:1 one two tiles and a thumbnail (the real ones tile up to 12).
    images = GotOcr2ImageProcessorPil(size=size, min_patches=1, max_patches=2)
    videos = InternVLVideoProcessor(size=size)
    seq = int((IMAGE_SIZE // PATCH) ** 2 * DOWNSAMPLE**2)
    processor = InternVLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                  image_seq_length=seq, chat_template=TEMPLATE)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": IMAGE_SIZE, "patch_size": PATCH}
    text = {**building.text_config(tok), "model_type": "qwen2"}
    config = InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=DOWNSAMPLE,
                            image_seq_length=seq, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
                            tie_word_embeddings=False)
    building.save(InternVLForConditionalGeneration, config, processor, out)
