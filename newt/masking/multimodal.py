"""Multimodal rows: the processor expands media into placeholder tokens, then the same scanner runs.

Nothing here decides a mask: `Masker.label` does, on the ids the processor produced, so a VLM row
honours `train_on_inputs`, `roles_to_train` and `train_on_eos` exactly like a text row, and every
media id the processor uses (placeholders and their begin/end/break markers) is -100.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from newt.masking.masker import Masker

IMAGE_KEYS = ("image", "path", "url", "image_url")


def load_image(ref: Any) -> Any:
    """A PIL image from a PIL image, a local path, or any fsspec URL (s3://, gs://, https://, ...)."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, dict):  # OpenAI style {"url": ...}
        ref = ref.get("url") or ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return Image.open(io.BytesIO(ref)).convert("RGB")
    import fsspec

    with fsspec.open(str(ref), "rb") as f:
        return Image.open(io.BytesIO(f.read())).convert("RGB")


def images_of(conversation: list[dict], column_images: Sequence[Any] = ()) -> list[Any]:
    """Images in the order the template places them: content parts of type "image" (or "image_url")
    that carry the image (`image`/`path`/`url`), else the next entry of the row's image column."""
    out, column = [], list(column_images)
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("image", "image_url"):
                continue
            ref = next((part[k] for k in IMAGE_KEYS if part.get(k) is not None), None)
            if ref is None:
                if not column:
                    raise ValueError(
                        "a message has an image part with no image and the row's image column has no "
                        "image left; give the part an `image`/`path`/`url`, or add it to the image column"
                    )
                ref = column.pop(0)
            out.append(load_image(ref))
    return out


def process_and_mask(
    processor: Any,
    conversations: Sequence[list[dict]],
    masker: Masker,
    images: Sequence[Sequence[Any]] | None = None,
    **processor_kwargs: Any,
) -> dict[str, Any]:
    """Render, let the processor expand the media, and label the expanded ids.

    Returns the processor's outputs (pixel values, grids, ...) with `input_ids` and `labels` as lists.
    `images[i]` is row i's image column (paths, URLs or PIL images) for parts that do not carry one.
    """
    texts = masker.render(conversations)
    row_images = [images_of(c, images[i] if images else ()) for i, c in enumerate(conversations)]
    kwargs = {"text": texts, "add_special_tokens": False, **processor_kwargs}  # the template writes BOS
    if any(row_images):
        kwargs["images"] = row_images
    enc = processor(**kwargs)
    input_ids = [list(map(int, r)) for r in enc["input_ids"]]
    out = dict(enc)
    out["input_ids"] = input_ids
    out["labels"] = masker.label(input_ids)
    return out
