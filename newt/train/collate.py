"""Multimodal batches for every vision-language (and audio-language) family, from the processor's own outputs.

The prepared rows carry ids the processor already expanded (one placeholder per image feature), labels the
masking engine decided, and each row's media as encoded bytes. At batch time the collator pads ids and labels
(labels with -100, so padding is never trained) and asks the processor for everything else the model's forward
takes:

- the audio side (`input_features`): the processor's own chat path on the batch's audio (`audio_inputs`);
- the media side (pixel values in the family's layout, `image_grid_thw`, `image_sizes`, `aspect_ratio_ids` /
  `aspect_ratio_mask`, `pixel_attention_mask`, ...): the processor's own image path on the batch's images, one
  list per row (rows without images included: per-row layouts such as Mllama's and Idefics3's keep the batch
  dimension, flat layouts such as LLaVA's and Gemma 3's concatenate), with the settings saved with the processor
  and the processor's own image defaults (`images_kwargs`), keeping what the processor lists in `model_input_names`.
  The processor, not its image processor alone, because processors pass image settings of their own: Pixtral's
  (Mistral 3's) resizes to multiples of patch × spatial_merge_size, where the image processor alone would use the
  patch size and give more patches than the row has `[IMG]` tokens. Processors whose own call drops what the
  collator needs (Mllama: the tile counts of its cross-attention mask) or refuses images without text (LFM2-VL) or
  a row without images (Gemma 3) get their image processor's outputs, with the processor's own image defaults;
- the token side: `mm_token_type_ids` / `token_type_ids` (Gemma 3, Qwen2-VL's multimodal RoPE) from the
  processor's `create_mm_token_type_ids` on the padded ids; Mllama's `cross_attention_mask` from the Mllama
  processor module's own functions (which image each text token attends to, over the image's tiles).

Nothing here builds a family-specific tensor by hand.
"""

from __future__ import annotations

import io
from typing import Any

import torch

IGNORE_INDEX = -100
# Processor outputs that describe text, which the collator builds from the stored ids instead.
TEXT_KEYS = ("input_ids", "attention_mask", "labels")
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


class VisionCollator:
    """Right-pads `input_ids`/`labels`, and adds the processor's media and token-type outputs for the batch.

    Images are given to the processor per row, in row order, which is the order of their placeholders in the
    batch."""

    def __init__(self, processor: Any, dtype: torch.dtype | None = None):
        self.processor = processor
        # The model's floating dtype: media features are cast to it (Llama 4's image processor normalizes in
        # bfloat16, as Meta's reference does; a float32 model's vision tower cannot take those).
        self.dtype = dtype
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.input_names = set(getattr(processor, "model_input_names", ()) or ())

    def __call__(self, rows: list[dict]) -> dict:
        n = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            input_ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            attention_mask[i, :k] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [[_image(b) for b in r.get("images") or ()] for r in rows]
        if any(images):
            media = media_inputs(self.processor, images, self.input_names)
            if self.dtype is not None:
                media = {k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                         for k, v in media.items()}
            batch.update(media)
        audio = [list(r.get("audios") or ()) for r in rows]
        if any(audio):
            batch.update(audio_inputs(self.processor, audio))
        batch.update(token_inputs(self.processor, input_ids, batch, self.input_names))
        # What the processor itself drops before the model sees it (e.g. Mllama's `num_tiles`, used above), and
        # image-processor outputs the processor does not list as model inputs (InternVL's `num_patches`, which
        # InternVLProcessor consumes when it lays out the pixels).
        unused = set(getattr(self.processor, "unused_input_names", ()) or ())
        return {k: v for k, v in batch.items() if k not in unused and isinstance(v, torch.Tensor)
                and (k in TEXT_KEYS or not self.input_names or k in self.input_names)}


def media_inputs(processor: Any, images: list[list[Any]], input_names: set[str] = frozenset()) -> dict:
    """The processor's image-side outputs for a batch: `images[i]` is row i's images (possibly none)."""
    if "cross_attention_mask" not in input_names:  # Mllama's processor drops `num_tiles`, which the mask needs
        try:
            out = processor(images=images, return_tensors="pt")
            return {k: v for k, v in out.items() if k not in TEXT_KEYS}
        except (TypeError, ValueError):
            # The processor takes images only with text (LFM2-VL refuses, InternVL fails on the missing text), or
            # not a row without any (Gemma 3): its image processor below, with the processor's image defaults.
            pass
    return image_processor_inputs(processor, images)


def image_processor_inputs(processor: Any, images: list[list[Any]]) -> dict:
    """The image processor's outputs for a batch, with the processor's own image defaults (its `images_kwargs`
    class attribute, which the processor gives its image processor on every call), so the pixels match the
    placeholders `prepared` expanded: InternVL's processor turns on `crop_to_patches`, which its image processor
    leaves off."""
    defaults = dict(getattr(processor, "images_kwargs", None) or {})
    out = processor.image_processor(images, return_tensors="pt", **defaults)
    out = {k: v for k, v in out.items() if k not in TEXT_KEYS}
    n = len(images)
    lengths = {v.shape[0] for v in out.values() if isinstance(v, torch.Tensor)}
    if n in lengths and len(lengths) > 1 and not all(images):
        # A per-row layout whose outputs disagree on the batch size: the torchvision Mllama image processor of
        # transformers 5.24 drops the rows without images from `aspect_ratio_ids`/`aspect_ratio_mask` (its PIL
        # twin keeps them as zeros). Process the rows with images and give the others zeros, as the PIL one does.
        return _scatter_rows(processor, images, defaults)
    return out


def _scatter_rows(processor: Any, images: list[list[Any]], defaults: dict) -> dict:
    rows = [i for i, imgs in enumerate(images) if imgs]
    sub = processor.image_processor([images[i] for i in rows], return_tensors="pt", **defaults)
    out: dict[str, Any] = {}
    for k, v in sub.items():
        if k in TEXT_KEYS:
            continue
        if isinstance(v, torch.Tensor) and v.shape[0] == len(rows):
            full = v.new_zeros((len(images), *v.shape[1:]))
            full[rows] = v
            out[k] = full
        elif isinstance(v, list) and len(v) == len(rows):  # e.g. Mllama's `num_tiles`: one list per row
            per_row: list[Any] = [[] for _ in images]
            for i, x in zip(rows, v):
                per_row[i] = x
            out[k] = per_row
        else:
            out[k] = v
    return out


def audio_inputs(processor: Any, audio: list[list[bytes]]) -> dict:
    """The processor's audio-side outputs (`input_features`, ...) for a batch: `audio[i]` is row i's audio (encoded
    bytes, possibly none). A processor that renders chats itself (Voxtral's mistral-common tokenizer) makes audio
    features only on its chat path, so it is given one user message holding the batch's audio in row order (the
    order of their placeholders in the batch); its text side is dropped, the stored ids are the text."""
    from newt.masking.multimodal import with_media
    from newt.templates import renders_in_code

    flat = [b for row in audio for b in row]
    if not renders_in_code(processor):
        raise ValueError(f"{type(processor).__name__}: newt gives audio only to processors that render chats "
                         "themselves (Voxtral's mistral-common tokenizer)")
    message = [{"role": "user", "content": [{"type": "audio"} for _ in flat]}]
    out = processor.apply_chat_template(with_media(message, (), flat), tokenize=True, return_dict=True)
    return {k: v for k, v in out.items() if k not in TEXT_KEYS}


def token_inputs(processor: Any, input_ids: torch.Tensor, batch: dict, input_names: set[str]) -> dict:
    out: dict[str, Any] = {}
    wanted = [k for k in TOKEN_TYPE_KEYS if k in input_names]
    if wanted and hasattr(processor, "create_mm_token_type_ids"):
        types = torch.as_tensor(processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.long)
        out.update({k: types for k in wanted})
    if "cross_attention_mask" in input_names and "num_tiles" in batch:
        out["cross_attention_mask"] = _mllama_cross_attention(processor, input_ids, batch)
    return out


def _mllama_cross_attention(processor: Any, input_ids: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mllama: which image (and how many of its tiles) each token attends to, as MllamaProcessor computes it."""
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    image_id = processor.image_token_id
    sparse = [get_cross_attention_token_mask(row, image_id) for row in input_ids.tolist()]
    mask = convert_sparse_cross_attention_mask_to_dense(
        sparse, num_tiles=batch["num_tiles"], max_num_tiles=processor.image_processor.max_image_tiles,
        length=input_ids.shape[1])
    return torch.as_tensor(mask)


def _image(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")

