"""Gemma 3: SigLIP tower → average-pooled soft tokens → Gemma 3 text model; each image is
`<start_of_image>` + `<image_soft_token>` × mm_tokens_per_image + `<end_of_image>`; turns are
`<start_of_turn>user|model\\n … <end_of_turn>`. Template: TRL's gemma3.jinja (google/gemma-3 chat template).
Generation stops at `<eos>` or `<end_of_turn>` (google/gemma-3 generation_config.json: eos_token_id [1, 106])."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 28  # (28 / 14)² = 4 patches, pooled to 4 soft tokens
TOKENS_PER_IMAGE = 4
GEMMA_TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]


def gemma_tokenizer(template: str, special: list[str] = GEMMA_TOKENS, **extra: str):
    return building.tokenizer(special, template, eos="<eos>", pad="<pad>", bos="<bos>",
                              extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                     "eoi_token": "<end_of_image>", **extra})


def build(out: Path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    template = building.trl_template("gemma3")
    tok = gemma_tokenizer(template)
    images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, chat_template=template,
                                image_seq_length=TOKENS_PER_IMAGE)
    text = building.text_config(tok, sliding_window=64, query_pre_attn_scalar=16,
                                layer_types=["sliding_attention", "full_attention"])
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": IMAGE_SIZE, "patch_size": 14}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=TOKENS_PER_IMAGE,
                          image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
                          boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    building.save(Gemma3ForConditionalGeneration, config, processor, out, stop_tokens=("<end_of_turn>",))
