"""SmolVLM 2 (HuggingFaceTB/SmolVLM2-*-Instruct: `SmolVLMForConditionalGeneration` + `SmolVLMProcessor`, the
Idefics3 architecture with a video processor): SigLIP tower → pixel shuffle → Llama; each image is
`<fake_token_around_image><global-img>` + `<image>` × image_seq_len + `<fake_token_around_image>`; turns are
`User: … <end_of_utterance>` / `Assistant: … <end_of_utterance>`. Template: TRL's smolvlm.jinja (SmolVLM's chat
template, byte-identical in SmolVLM2). `SmolVLMProcessor` needs the `num2words` package (it writes a video's frame
count in words) and its video processor needs torchvision."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # one 56-pixel global image: (56 / 14)² = 16 patches, pixel-shuffled by 2 → 4 image tokens
SCALE = 2
TOKENS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
          "<global-img>"]


def build(out: Path) -> None:
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    template = building.trl_template("smolvlm")
    tok = building.tokenizer(TOKENS, template, eos="<end_of_utterance>", pad="<|endoftext|>",
                             extra={"image_token": "<image>"})
    size = {"longest_edge": IMAGE_SIZE}
    images = SmolVLMImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size)
    videos = SmolVLMVideoProcessor(size=size, max_image_size=size)
    seq = (IMAGE_SIZE // 14) ** 2 // SCALE**2
    processor = SmolVLMProcessor(image_processor=images, tokenizer=tok, video_processor=videos, image_seq_len=seq,
                                 chat_template=template)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": IMAGE_SIZE, "patch_size": 14}
    text = {**building.text_config(tok), "model_type": "llama"}
    config = SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=SCALE,
                           image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    building.save(SmolVLMForConditionalGeneration, config, processor, out)
