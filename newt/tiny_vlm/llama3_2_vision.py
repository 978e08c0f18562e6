"""Llama 3.2 Vision (Mllama): a tiled ViT whose features the text model reads through cross-attention layers;
each image is one `<|image|>` token in the text, and `cross_attention_mask` says which image (and tiles) each
token attends to. Turns are Llama 3's `<|start_header_id|>{role}<|end_header_id|>\\n\\n … <|eot_id|>`.

Template: written from Meta's documented Llama 3.2 Vision prompt format (llama.com/docs/model-cards-and-prompt-
formats/llama3_2: `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n<|image|>Describe this image
<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`): images as `<|image|>`, text trimmed, no system
prompt with images (the real template refuses one). No package ships this template."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 28  # one 28-pixel tile of (28 / 14)² patches
TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
          "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def build(out: Path) -> None:
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tok = building.tokenizer(TOKENS, TEMPLATE, eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                             bos="<|begin_of_text|>", extra={"image_token": "<|image|>"})
    images = MllamaImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, max_image_tiles=1)
    processor = MllamaProcessor(image_processor=images, tokenizer=tok, chat_template=TEMPLATE)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_global_layers": 1,
              "attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 14, "max_num_tiles": 1,
              "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "supported_aspect_ratios": [[1, 1]]}
    text = building.text_config(tok, cross_attention_layers=[1], rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": 10000.0})
    text.pop("head_dim")
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    building.save(MllamaForConditionalGeneration, config, processor, out, stop_tokens=("<|eom_id|>",))
