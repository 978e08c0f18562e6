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

IMAGE_KEYS = ("image", "path", "url", "image_url", "base64")
AUDIO_KEYS = ("audio", "path", "url", "base64")
# Content part types of each medium (transformers' and OpenAI's spellings) and the keys that carry the medium.
PART_TYPES = {"image": ("image", "image_url"), "audio": ("audio",)}
PART_KEYS = {"image": IMAGE_KEYS, "audio": AUDIO_KEYS}


def image_bytes(ref: Any, base: str | None = None) -> bytes:
    """The encoded bytes of one image (or audio) reference: bytes, a PIL image (saved as PNG), a
    `{"bytes"|"url"|"path"}` dict (Hugging Face `Image`/`Audio` feature, OpenAI `image_url`), a base64 data URL, a
    path or any fsspec URL (s3://, gs://, https://, ...). A relative path is read from `base` (the dataset's
    folder) when given."""
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("url") or ref.get("path")
    if hasattr(ref, "save"):  # a PIL image
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue()
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"a media reference must be a path, URL, base64 data URL or bytes, got {ref!r}")
    if ref.startswith("data:") and ";base64," in ref:
        import base64

        return base64.b64decode(ref.split(";base64,", 1)[1])
    import fsspec

    if base and "://" not in ref and not ref.startswith("/"):
        ref = f"{base.rstrip('/')}/{ref}"
    with fsspec.open(ref, "rb") as f:
        return f.read()


def load_image(ref: Any, base: str | None = None) -> Any:
    """A PIL image (RGB) from any reference `image_bytes` reads."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    return Image.open(io.BytesIO(image_bytes(ref, base))).convert("RGB")


def image_refs(conversation: list[dict], column_images: Sequence[Any] = (), kind: str = "image") -> list[Any]:
    """Image (kind="audio": audio) references in the order the template places them: content parts of type
    "image" (or "image_url"; "audio") that carry the medium (`image`/`audio`/`path`/`url`/`base64`), else the next
    entry of the row's image (audio) column."""
    out, column = [], list(column_images or ())
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES[kind]:
                continue
            key = next((k for k in PART_KEYS[kind] if part.get(k) is not None), None)
            ref = part[key] if key else None
            if key == "base64" and not str(ref).startswith("data:"):  # raw base64: any format decodes
                ref = f"data:{kind}/unknown;base64," + ref
            if ref is None:
                if not column:
                    raise ValueError(
                        f"a message has an {kind} part with no {kind} and the row's {kind} column has no "
                        f"{kind} left; give the part an `{kind}`/`path`/`url`, or add it to the {kind} column"
                    )
                ref = column.pop(0)
            out.append(ref)
    if column:
        raise ValueError(f"the row's {kind} column has {len(column)} {kind}(s) more than its messages have {kind} "
                         f"parts ({{\"type\": \"{kind}\"}}); each {kind} needs a part that says where it goes")
    return out


def audio_refs(conversation: list[dict], column_audio: Sequence[Any] = ()) -> list[Any]:
    """Audio references in template order: `{"type": "audio", "path"|"url"|"base64"|"audio": ...}` parts, else the
    next entry of the row's audio column (see `image_refs`)."""
    return image_refs(conversation, column_audio, kind="audio")


def images_of(conversation: list[dict], column_images: Sequence[Any] = (), base: str | None = None) -> list[Any]:
    """The PIL images of one conversation, in template order (see `image_refs`)."""
    return [load_image(ref, base) for ref in image_refs(conversation, column_images)]


def without_media(conversation: list[dict]) -> list[dict]:
    """The conversation with every image part reduced to `{"type": "image"}` and every audio part to
    `{"type": "audio"}`: JSON-safe, and the form the audit and the `messages` column keep (the media themselves
    are stored once, as bytes)."""
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            content = [_bare(p) for p in content]
        out.append({**message, "content": content})
    return out


def _kind(part: Any) -> str | None:
    """"image" / "audio" for a media part, else None."""
    if isinstance(part, dict):
        return next((kind for kind, types in PART_TYPES.items() if part.get("type") in types), None)
    return None


def _bare(part: Any) -> Any:
    kind = _kind(part)
    return {"type": kind} if kind else part


def with_media(conversation: list[dict], images: Sequence[bytes] = (), audio: Sequence[bytes] = ()) -> list[dict]:
    """The conversation with its media parts, in order, carrying `images` / `audio` (encoded bytes) as base64: the
    form a processor that reads media itself (mistral-common's) takes, whatever the row named them by."""
    import base64

    media = {"image": list(images), "audio": list(audio)}
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = _kind(part)
                if kind is None:
                    parts.append(part)
                    continue
                data = base64.b64encode(media[kind].pop(0)).decode()
                parts.append({"type": kind, "base64": f"data:image/png;base64,{data}" if kind == "image" else data})
            content = parts
        out.append({**message, "content": content})
    return out


def process_and_mask(
    processor: Any,
    conversations: Sequence[list[dict]],
    masker: Masker,
    images: Sequence[Sequence[Any]] | None = None,
    base: str | None = None,
    audio: Sequence[Sequence[Any]] | None = None,
    **processor_kwargs: Any,
) -> dict[str, Any]:
    """Render, let the processor expand the media, and label the expanded ids.

    Returns the processor's outputs (pixel values, grids, audio features, ...) with `input_ids` and `labels` as
    lists, and `image_bytes` / `audio_bytes`: each row's images / audio as encoded bytes, in template order (what the
    prepared data stores). `images[i]` (`audio[i]`) is row i's image (audio) column (paths, URLs or PIL images) for
    parts that do not carry one.

    A processor whose tokenizer renders chats in code (mistral-common's: no Jinja template, `masker.template` is
    None) gives the ids itself: its `apply_chat_template(tokenize=True)` on each conversation with its media as
    base64, which also expands each image or audio into its placeholder tokens.
    """
    from PIL import Image

    row_bytes = [[image_bytes(ref, base) for ref in image_refs(c, images[i] if images else ())]
                 for i, c in enumerate(conversations)]
    row_audio = [[image_bytes(ref, base) for ref in audio_refs(c, audio[i] if audio else ())]
                 for i, c in enumerate(conversations)]
    if masker.template is None:
        out = _processor_renders(processor, conversations, row_bytes, row_audio, processor_kwargs)
    else:
        if any(row_audio):
            raise ValueError(f"{type(processor).__name__} renders chats with a Jinja template; newt gives audio only "
                             "to processors that render chats themselves (Voxtral's mistral-common tokenizer)")
        texts = masker.render(conversations)
        # The template writes BOS. Lists, not tensors: rows differ in length, and some processors default to
        # tensors (PixtralProcessor: return_tensors="pt").
        kwargs = {"text": texts, "add_special_tokens": False, "return_tensors": None, **processor_kwargs}
        if any(row_bytes):
            kwargs["images"] = [[Image.open(io.BytesIO(b)).convert("RGB") for b in row] for row in row_bytes]
        out = dict(processor(**kwargs))
    input_ids = masker.close_rows([list(map(int, r)) for r in out["input_ids"]])
    out["input_ids"] = input_ids
    out["labels"] = masker.label(input_ids)
    out["image_bytes"] = row_bytes
    out["audio_bytes"] = row_audio
    return out


def _processor_renders(processor: Any, conversations: Sequence[list[dict]], images: list[list[bytes]],
                       audio: list[list[bytes]], processor_kwargs: dict) -> dict[str, Any]:
    """One `apply_chat_template(tokenize=True)` per conversation (no padding to undo); media outputs concatenated
    in row order, as the model's forward takes them."""
    import numpy as np
    import torch

    rows: list[list[int]] = []
    media: dict[str, list] = {}
    for conv, imgs, auds in zip(conversations, images, audio):
        enc = processor.apply_chat_template(with_media(conv, imgs, auds), tokenize=True, return_dict=True,
                                            **processor_kwargs)
        rows.append(np.asarray(enc["input_ids"]).reshape(-1).tolist())
        for k, v in enc.items():
            if k not in ("input_ids", "attention_mask"):
                media.setdefault(k, []).append(v)
    out: dict[str, Any] = {k: torch.cat(v) if all(isinstance(t, torch.Tensor) for t in v) else v
                           for k, v in media.items()}
    out["input_ids"] = rows
    return out


def local_image_digests(dataset_path: str, base: str) -> dict[str, str]:
    """{path: sha256} of every local image or audio file a local JSON Lines / JSON dataset's rows name (parts or the
    `images`/`image`, `audios`/`audio` columns), so the `prepared` key changes when a file is replaced in place.
    Media given as
    bytes or base64 are in the dataset file itself; remote URLs and other formats are not read here
    (docs/masking.md). The rows are parsed once per dataset content (the list of paths is cached under the
    dataset's sha256); each image's digest is reused while its size and mtime are unchanged."""
    from pathlib import Path

    from newt.cache import file_sha256

    path = Path(dataset_path).expanduser()
    if "://" in dataset_path or not path.is_file() or path.suffix not in (".jsonl", ".json"):
        return {}
    out = {}
    for ref in _image_paths(path):
        file = Path(ref) if ref.startswith("/") else Path(base) / ref
        if file.is_file():
            out[ref] = file_sha256(file)
    return out


def _image_paths(path: Any) -> list[str]:
    """The local image and audio paths a dataset file's rows name, cached by the file's content digest."""
    import json
    import os

    from newt.cache import file_sha256
    from newt.tiny import cache_dir

    entry = cache_dir() / "media_paths" / f"{file_sha256(path)}.json"
    try:
        return json.loads(entry.read_text())
    except (OSError, ValueError):
        pass
    text = path.read_text()
    rows: list = []
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            rows = data if isinstance(data, list) else []
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return []  # not JSON: the dataset stage names the bad line
    refs: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        conv = next((row[k] for k in ("messages", "conversations") if isinstance(row.get(k), list)), [])
        found = []
        for kind, names in (("image", ("images", "image")), ("audio", ("audios", "audio"))):
            column = next((row[n] for n in names if n in row), None)
            column = column if isinstance(column, list) else ([column] if column else [])
            try:
                found += image_refs(conv, column, kind=kind)
            except (ValueError, AttributeError, TypeError):
                continue  # prepare reports the row, with the fix
        for ref in found:
            if isinstance(ref, dict):
                ref = ref.get("path") if not ref.get("bytes") else None
            if isinstance(ref, str) and "://" not in ref and not ref.startswith("data:"):
                refs[ref] = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")  # concurrent planners each write their own
        tmp.write_text(json.dumps(list(refs)))
        tmp.replace(entry)
    except OSError:  # a read-only cache only costs a re-parse next time
        pass
    return list(refs)
