"""The `prepared` stage's row processing: one source's Arrow rows → token ids, loss labels and bookkeeping columns,
by one `datasets` batched map per window of rows (`tokenize_source`, `RowProcessor`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from newt import IGNORE_INDEX as IGNORE
from newt.config import DatasetSpec, Recipe
from newt.prepare_shards import WINDOW, reopen

BATCH = 1000
# Row status written by the map; only KEPT rows reach the artifact, the others are counted.
KEPT, TOO_LONG, ZERO_AS_WRITTEN, ZERO_AFTER_TRUNCATION = 0, 1, 2, 3


class PrepareError(ValueError):
    pass


def masker_for(recipe: Recipe, spec: DatasetSpec, tokenizer: Any, template: str):
    from newt.masking import Masker
    from newt.tokens import check_turn_ends

    masker = Masker(
        tokenizer,
        chat_template=template,
        roles_to_train=tuple(spec.roles_to_train or recipe.roles_to_train),
        train_on_eos=spec.train_on_eos or recipe.train_on_eos,
        train_on_inputs=recipe.train_on_inputs,
        role_boundaries=recipe.role_boundaries or None,  # typed: the schema already checked them
    )
    check_turn_ends(recipe, masker.boundaries, tokenizer)  # issue 16: eot_tokens are the turn ends
    return masker


def features(dedup: bool, multimodal: bool = False, audio: bool = False):
    import datasets

    cols = {
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "messages": datasets.Value("string"),
        "source": datasets.Value("int16"),
        "status": datasets.Value("int8"),
        "truncated": datasets.Value("bool"),
        "length": datasets.Value("int32"),
        "supervised": datasets.Value("int32"),
    }
    if dedup:
        cols["digest"] = datasets.Value("binary")
    if multimodal:  # each row's images, encoded, in the order of its media placeholders
        cols["images"] = datasets.List(datasets.Value("binary"))
    if audio:  # each row's audio, encoded (a processor with an audio feature extractor)
        cols["audios"] = datasets.List(datasets.Value("binary"))
    return datasets.Features(cols)


def has_audio(processor: Any) -> bool:
    """Whether a multimodal processor takes audio (has a feature extractor): its prepared rows carry `audios`."""
    return getattr(processor, "feature_extractor", None) is not None


class RowProcessor:
    """The batched-map function for one source: rows → input_ids, labels and bookkeeping columns.

    A plain picklable object (no closures), so `num_proc` workers receive it once per process.
    """

    def __init__(self, recipe: Recipe, spec: DatasetSpec, index: int, tokenizer: Any, template: str | None):
        from newt import formats

        self.spec, self.index, self.key_path = spec, index, f"datasets[{index}]"
        self.offset = 0  # row number of the first row of the window being mapped (errors name source rows)
        self.sequence_len, self.strategy = recipe.sequence_len, recipe.excess_length_strategy
        self.dedup = recipe.dataset_exact_deduplication
        self.tokenizer = tokenizer  # a multimodal processor when recipe.processor_type is set
        self.multimodal = recipe.processor_type is not None
        self.chat = spec.type in formats.CHAT_TYPES
        if self.multimodal and not self.chat:
            raise PrepareError(f"{self.key_path}: type {spec.type!r} has no place for images; multimodal recipes "
                               f"(processor_type) take chat_template rows")
        self.masker = masker_for(recipe, spec, tokenizer, template) if self.chat else None
        self.roles = formats.role_lookup(spec)
        if self.multimodal:
            from newt.masking import media_ids

            self.media = set(media_ids(tokenizer))
        else:
            self.media = set()
        self.image_base = image_base(spec.path) if self.multimodal else None

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        from newt import formats

        n = len(indices)
        indices = [self.offset + i for i in indices]
        rows = [{k: batch[k][r] for k in batch} for r in range(n)]
        images = audio = None
        if self.multimodal:
            convs = [formats.to_conversation(row, self.spec, self.key_path, i, self.roles)
                     for row, i in zip(rows, indices)]
            out = self._process_media(convs, rows, indices)
            all_ids, all_labels = out["input_ids"], out["labels"]
            images, audio = out["image_bytes"], out["audio_bytes"]
            from newt.masking.multimodal import without_media

            messages = [json.dumps(without_media(c), ensure_ascii=False) for c in convs]
        elif self.chat:
            convs = [formats.to_conversation(row, self.spec, self.key_path, i, self.roles)
                     for row, i in zip(rows, indices)]
            try:
                out = self.masker(convs)
            except Exception as exc:  # noqa: BLE001 - a template may raise anything; _template_error names the row
                raise self._template_error(convs, indices, exc) from None
            all_ids, all_labels = out["input_ids"], out["labels"]
            messages = [json.dumps(c, ensure_ascii=False) for c in convs]
        else:
            segs = [formats.to_segments(row, self.spec, self.key_path, i) for row, i in zip(rows, indices)]
            all_ids, all_labels = self._tokenize_segments(segs)
            messages = [json.dumps(formats.segments_as_messages(s), ensure_ascii=False) for s in segs]
        cols: dict[str, list] = {k: [] for k in ("input_ids", "labels", "status", "truncated", "length", "supervised")}
        digests = []
        for r, (ids, labels) in enumerate(zip(all_ids, all_labels)):
            status, truncated = KEPT, False
            if labels.count(IGNORE) == len(labels):
                status = ZERO_AS_WRITTEN
            elif len(ids) > self.sequence_len:
                # A cut through media tokens would leave pixels without their placeholders: such rows are dropped.
                if self.strategy == "drop" or (self.media and not self.media.isdisjoint(ids[self.sequence_len:])):
                    status = TOO_LONG
                else:
                    ids, labels, truncated = ids[: self.sequence_len], labels[: self.sequence_len], True
                    if labels.count(IGNORE) == len(labels):
                        status = ZERO_AFTER_TRUNCATION
            if status != KEPT:
                ids, labels = [], []
            cols["input_ids"].append(ids)
            cols["labels"].append(labels)
            cols["status"].append(status)
            cols["truncated"].append(truncated)
            cols["length"].append(len(ids))
            cols["supervised"].append(len(labels) - labels.count(IGNORE))
            if self.dedup:
                h = hashlib.blake2b(np.asarray(ids + [-1] + labels, dtype=np.int64).tobytes(), digest_size=16)
                media = [*images[r], *audio[r]] if images is not None else []
                for item in media:  # same text, other picture or sound: not a duplicate
                    h.update(hashlib.blake2b(item, digest_size=16).digest())
                digests.append(h.digest())
        cols["messages"] = messages
        cols["source"] = [self.index] * n
        if self.dedup:
            cols["digest"] = digests
        if images is not None:
            cols["images"] = [imgs if s == KEPT else [] for imgs, s in zip(images, cols["status"])]
        if audio is not None and has_audio(self.tokenizer):
            cols["audios"] = [clips if s == KEPT else [] for clips, s in zip(audio, cols["status"])]
        return cols

    def _process_media(self, convs: list[list[dict]], rows: list[dict], indices: list[int]) -> dict[str, Any]:
        """Multimodal rows: the processor expands each image into its placeholder tokens, then the same scanner
        labels the expanded ids (newt.masking.multimodal). A bad image reference names its row."""
        from newt.masking.multimodal import process_and_mask

        per_row = media_column(rows, ("images", "image"))
        per_clip = media_column(rows, ("audios", "audio"))
        try:
            return process_and_mask(self.tokenizer, convs, self.masker, images=per_row, base=self.image_base,
                                    audio=per_clip)
        except Exception as exc:  # noqa: BLE001 - find the row: a missing file, a bad URL, a template error
            for r, (conv, i) in enumerate(zip(convs, indices)):
                try:
                    process_and_mask(self.tokenizer, [conv], self.masker, images=[per_row[r]] if per_row else None,
                                     base=self.image_base, audio=[per_clip[r]] if per_clip else None)
                except Exception as row_exc:  # noqa: BLE001
                    from newt.masking.multimodal import audio_refs

                    media = "audio" if per_clip or _has_audio_parts(conv, audio_refs) else "images"
                    raise PrepareError(
                        f"{self.key_path} ({self.spec.path}) row {i}: its {media} could not be processed "
                        f"({type(row_exc).__name__}: {row_exc}); image parts take `image`/`path`/`url`/`base64` and "
                        f"audio parts (`{{\"type\": \"audio\"}}`) `audio`/`path`/`url`/`base64`, or the row's "
                        f"`images` / `audios` column fills parts without one (relative paths are read from "
                        f"{self.image_base})"
                    ) from None
            raise exc

    def _template_error(self, convs: list[list[dict]], indices: list[int], exc: Exception) -> Exception:
        """Name the first row the chat template refuses to render; other errors pass through unchanged."""
        for conv, i in zip(convs, indices):
            try:
                self.masker.render([conv])
            except Exception as row_exc:  # noqa: BLE001 - whatever the template raised, for this row
                return PrepareError(
                    f"{self.key_path} ({self.spec.path}) row {i}: the chat template refused this conversation "
                    f"({type(row_exc).__name__}: {row_exc}); fix the row (e.g. merge consecutive turns of one role "
                    f"into one turn) or set chat_template / chat_template_jinja to a template that accepts it"
                )
        return exc

    def _tokenize_segments(self, segs: list[list[tuple[str, bool]]]) -> tuple[list[list[int]], list[list[int]]]:
        """Text formats: every segment of the batch in one tokenizer call; `completion` gets BOS/EOS like
        `tokenizer(text)` plus EOS, `input_output` nothing added (the segments carry their own special tokens)."""
        from newt.masking.boundaries import never_trained_ids

        tok = self.tokenizer
        ignore = set(never_trained_ids(tok, {tok.eos_token_id}))  # these rows' only turn end is the EOS
        flat = [text for s in segs for text, _ in s]
        encoded = tok(flat, add_special_tokens=self.spec.type == "completion")["input_ids"]
        ids_out, labels_out, k = [], [], 0
        for s in segs:
            ids, labels = [], []
            for _, trained in s:
                piece = list(encoded[k])
                k += 1
                ids += piece
                labels += piece if trained else [IGNORE] * len(piece)
            if self.spec.type == "completion" and tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
                ids.append(tok.eos_token_id)
                labels.append(tok.eos_token_id)
            if ignore:
                labels = [IGNORE if t in ignore else t for t in labels]
            ids_out.append(ids)
            labels_out.append(labels)
        return ids_out, labels_out


def _has_audio_parts(conv: list[dict], audio_refs: Any) -> bool:
    try:
        return bool(audio_refs(conv))
    except ValueError:  # an audio part with nothing to fill it: an audio row
        return True


def media_column(rows: list[dict], names: tuple[str, ...]) -> list[list] | None:
    """Each row's entries of its media column (the first of `names` the rows have): a list per row, or one
    entry, or nothing; None when the rows have no such column."""
    column = next((c for c in names if rows and c in rows[0]), None)
    if column is None:
        return None
    return [v if isinstance(v, list) else [] if v is None else [v] for v in (r[column] for r in rows)]


def image_base(dataset_path: str) -> str:
    """Where relative image paths of a dataset are read from: the dataset file's folder (or the folder itself)."""
    if "://" in dataset_path:
        return dataset_path.rsplit("/", 1)[0] if "." in dataset_path.rsplit("/", 1)[-1] else dataset_path
    path = Path(dataset_path).expanduser().resolve()
    return str(path if path.is_dir() else path.parent)


def tokenize_source(raw, recipe: Recipe, spec: DatasetSpec, index: int, tokenizer: Any, template: str | None, *,
                    num_proc: int, cache_dir: str, fingerprint: str, processor: RowProcessor | None = None):
    """One source's Arrow rows → the processed Arrow rows (every row, with its status), written under cache_dir.

    The rows are mapped WINDOW at a time, each window through a fresh memory map of the source (`reopen`), so no
    process keeps more than a window of the source resident. The processor (its Masker resolves boundaries once)
    is built once per source and shipped to the workers of each window."""
    import datasets

    from newt.formats import check_columns

    check_columns(raw.column_names, spec, f"datasets[{index}]")
    processor = processor or RowProcessor(recipe, spec, index, tokenizer, template)
    multimodal = recipe.processor_type is not None
    features_ = features(recipe.dataset_exact_deduplication, multimodal=multimodal,
                         audio=multimodal and has_audio(tokenizer))
    n, outs = len(raw), []
    for w, start in enumerate(range(0, max(n, 1), WINDOW)):
        rows = reopen(raw)
        if n > WINDOW:
            rows = rows.select(range(start, min(start + WINDOW, n)))
        processor.offset = start
        procs = max(1, min(num_proc, len(rows) // BATCH or 1))  # a worker per batch at most: forks cost ~0.3 s
        outs.append(rows.map(
            processor,
            batched=True,
            batch_size=BATCH,
            with_indices=True,
            remove_columns=rows.column_names,
            features=features_,
            num_proc=procs if procs > 1 else None,
            new_fingerprint=f"{fingerprint}-{w}",  # explicit: datasets would otherwise hash the tokenizer each call
            cache_file_name=str(Path(cache_dir) / f"source-{index}-{w:05d}.arrow"),
            load_from_cache_file=False,  # the stage's own key is the cache; a stale temp file must never be read
            desc=f"prepared: datasets[{index}]",
        ))
        del rows
    processor.offset = 0
    return outs[0] if len(outs) == 1 else datasets.concatenate_datasets(outs)
