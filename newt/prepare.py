"""The `prepared` stage: rows → conversations or text segments → token ids + loss labels → merged, split, packed.

Each source is processed by one `datasets` batched `map` over its memory-mapped Arrow folder (`RowProcessor`):
convert rows per `type` (`newt.formats`), render each conversation once, tokenize the batch in one call, label it
with the masking engine's scanner, apply `sequence_len`. Nothing holds the rows as Python objects: counting,
deduplication, shuffling and the split are index arithmetic over Arrow columns, so memory stays flat for data
larger than RAM (docs/prepare-speed.md). The map's fingerprint is set from the stage key, so `datasets` never hashes
the tokenizer, and `dataset_num_proc` processes give byte-identical output.

Artifact: `data/` (a DatasetDict {train, validation} that loads with `datasets.load_from_disk`; columns
input_ids, labels, messages, source — or input_ids, labels, seq_lengths for a packed train split) and
`masking.json` (counts, supervised tokens per role, audit, mask preview, packing).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from newt.config import DatasetSpec, Recipe
from newt.pipeline import StageRun

IGNORE = -100
BATCH = 1000
# Rows per map call and per written shard. Every chunk is read through a fresh memory map that is released after
# it, so the file pages a process keeps resident are bounded by a window, not by the dataset (docs/prepare-speed.md).
WINDOW = 100_000
AUDIT_ROWS = 1000
# Row status written by the map; only KEPT rows reach the artifact, the others are counted.
KEPT, TOO_LONG, ZERO_AS_WRITTEN, ZERO_AFTER_TRUNCATION = 0, 1, 2, 3


class PrepareError(ValueError):
    pass


def masker_for(recipe: Recipe, spec: DatasetSpec, tokenizer: Any, template: str):
    from newt.masking import Masker

    return Masker(
        tokenizer,
        chat_template=template,
        roles_to_train=tuple(spec.roles_to_train or recipe.roles_to_train),
        train_on_eos=spec.train_on_eos or recipe.train_on_eos,
        train_on_inputs=recipe.train_on_inputs,
        role_boundaries=[b.model_dump() for b in recipe.role_boundaries] or None,
    )


def features(dedup: bool, multimodal: bool = False):
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
    return datasets.Features(cols)


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
        images = None
        if self.multimodal:
            convs = [formats.to_conversation(row, self.spec, self.key_path, i, self.roles)
                     for row, i in zip(rows, indices)]
            out = self._process_media(convs, rows, indices)
            all_ids, all_labels, images = out["input_ids"], out["labels"], out["image_bytes"]
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
                for image in images[r] if images is not None else ():  # same text, other picture: not a duplicate
                    h.update(hashlib.blake2b(image, digest_size=16).digest())
                digests.append(h.digest())
        cols["messages"] = messages
        cols["source"] = [self.index] * n
        if self.dedup:
            cols["digest"] = digests
        if images is not None:
            cols["images"] = [imgs if s == KEPT else [] for imgs, s in zip(images, cols["status"])]
        return cols

    def _process_media(self, convs: list[list[dict]], rows: list[dict], indices: list[int]) -> dict[str, Any]:
        """Multimodal rows: the processor expands each image into its placeholder tokens, then the same scanner
        labels the expanded ids (newt.masking.multimodal). A bad image reference names its row."""
        from newt.masking.multimodal import process_and_mask

        column = next((c for c in ("images", "image") if rows and c in rows[0]), None)
        per_row = None
        if column:  # a list of images per row, or one image, or nothing
            per_row = [v if isinstance(v, list) else [] if v is None else [v] for v in (r[column] for r in rows)]
        try:
            return process_and_mask(self.tokenizer, convs, self.masker, images=per_row, base=self.image_base)
        except Exception as exc:  # noqa: BLE001 - find the row: a missing file, a bad URL, a template error
            for r, (conv, i) in enumerate(zip(convs, indices)):
                try:
                    process_and_mask(self.tokenizer, [conv], self.masker, images=[per_row[r]] if per_row else None,
                                     base=self.image_base)
                except Exception as row_exc:  # noqa: BLE001
                    raise PrepareError(
                        f"{self.key_path} ({self.spec.path}) row {i}: its images could not be processed "
                        f"({type(row_exc).__name__}: {row_exc}); image parts take `image`/`path`/`url`/`base64`, "
                        f"or the row's `images` column fills parts without one (relative paths are read from "
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
        from newt.masking import media_ids
        from newt.masking.boundaries import pad_ids

        tok = self.tokenizer
        # The masking engine's rule on every path: pad and media ids are never trained; a pad that is also the EOS
        # stays trainable, or the model would never learn to stop.
        ignore = (set(media_ids(tok)) | set(pad_ids(tok))) - {tok.eos_token_id}
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
    features_ = features(recipe.dataset_exact_deduplication, multimodal=recipe.processor_type is not None)
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


def arrow_files(ds) -> list[str] | None:
    """The Arrow files holding `ds`'s rows, in row order; None when `ds` is in memory or a selection."""
    files = [f["filename"] for f in ds.cache_files]
    if not files or ds._indices is not None:  # in memory, or a selection (its indices mapping would be lost)
        return None
    return files


def reopen(ds):
    """The same rows through a fresh memory map of their Arrow files (an in-memory dataset as it is). Pages read
    through the old map stay resident until that map is released; a new map starts with none."""
    import datasets

    files = arrow_files(ds)
    if files is None:
        return ds
    fresh = [datasets.Dataset.from_file(f) for f in files]
    return fresh[0] if len(fresh) == 1 else datasets.concatenate_datasets(fresh)


def gather(files: list[str], offsets: np.ndarray, rows: np.ndarray, columns: list[str]):
    """Rows `rows` (global indices into the concatenated `files`, any order) as an in-memory Arrow table, reading
    one file at a time through its own memory map, released before the next.

    A random sample of rows spans the whole file, and every page fault reads ahead (128 kB), so taking shuffled rows
    through one map leaves nearly the whole file resident. File by file, at most one file is (a window's map
    output: ≈0.2 GB at 50,000 chats)."""
    import datasets
    import pyarrow as pa

    by_position = np.argsort(rows, kind="stable")
    ordered = rows[by_position]
    file_of = np.searchsorted(offsets, ordered, side="right") - 1
    pieces = []
    for j in np.unique(file_of).tolist():
        local = ordered[file_of == j] - offsets[j]
        table = datasets.Dataset.from_file(files[j]).data.table  # zero-copy over the file's memory map
        # pyarrow's take copies the rows out; the file is unmapped when `table` goes. (datasets' own `select` +
        # read returns one-row slices that keep every file's map alive.)
        pieces.append(table.select(columns).take(pa.array(local)))
        del table
    table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    back = np.empty_like(by_position)
    back[by_position] = np.arange(len(by_position))
    return table.take(pa.array(back))


def write_splits(splits: dict[str, tuple[Any, np.ndarray, list[str]]], out: Path, fingerprint: str) -> None:
    """`splits[name] = (rows, order, columns)`: rows `order` of `rows` → `out` as a DatasetDict that
    `datasets.load_from_disk` reads, one Arrow shard per WINDOW rows.

    `Dataset.save_to_disk` reads every row through one memory map held for the whole write: for shuffled rows of a
    2 M-conversation dataset that left 7.4 GiB of file pages resident. Here each shard's rows are gathered file by
    file (`gather`) and saved on their own, and the shards are then assembled into the layout save_to_disk writes
    (its `state.json` names the files). `fingerprint` (from the stage key) keeps the folder byte-identical."""
    import shutil

    import datasets
    from datasets.table import InMemoryTable

    if out.exists():  # a crashed earlier attempt: never mix its shards with these
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, (rows, order, columns) in splits.items():
        split_dir = out / name
        split_dir.mkdir()
        files = arrow_files(rows)
        sizes = [datasets.Dataset.from_file(f).num_rows for f in files or ()]
        if files is None or sum(sizes) != len(rows):  # the map and packing always write files; anything else is a bug
            raise RuntimeError(f"prepared: the {name} rows are not the plain Arrow files they should be ({files})")
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        info = datasets.DatasetInfo(features=datasets.Features({c: rows.features[c] for c in columns}))
        n_shards = max(1, -(-len(order) // WINDOW))
        state = None
        for k in range(n_shards):
            idx = np.asarray(order[k * WINDOW:(k + 1) * WINDOW], dtype=np.int64)
            part = datasets.Dataset(InMemoryTable(gather(files, offsets, idx, columns)), info=info)
            tmp = out / f".{name}-{k}"
            part.save_to_disk(str(tmp), num_shards=1)
            del part
            (tmp / "data-00000-of-00001.arrow").rename(split_dir / f"data-{k:05d}-of-{n_shards:05d}.arrow")
            if state is None:
                state = json.loads((tmp / "state.json").read_text())
            shutil.rmtree(tmp)
        # Plain rows, no format: what load_from_disk of a freshly saved dataset would see.
        state.update(_data_files=[{"filename": f"data-{k:05d}-of-{n_shards:05d}.arrow"} for k in range(n_shards)],
                     _fingerprint=f"{fingerprint}-{name}", _format_columns=None, _format_kwargs={},
                     _format_type=None, _output_all_columns=False, _split=None)
        (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        (split_dir / "dataset_info.json").write_text(json.dumps({"features": info.features.to_dict()}, indent=2))
    (out / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))


def column(ds, name: str) -> np.ndarray:
    """An Arrow column as numpy, without Python objects (ds must have no indices mapping)."""
    return ds.data.column(name).to_numpy()


def build(run: StageRun) -> dict[str, Any]:
    import datasets

    from newt import models, templates
    from newt.data import source_dir
    from newt.formats import CHAT_TYPES

    recipe = run.recipe
    if recipe.rl is not None:  # preference / RL rows: prompt, chosen, rejected ... (newt/preference.py)
        from newt.preference import build_preference

        return build_preference(run)
    if recipe.processor_type:  # multimodal: the processor renders, expands media and tokenizes
        tokenizer = models.load_processor(recipe.tokenizer_config or recipe.base_model, recipe.processor_type,
                                          trust_remote_code=recipe.trust_remote_code)
    else:
        tokenizer = models.load_tokenizer(recipe.tokenizer_config or recipe.base_model,
                                          trust_remote_code=recipe.trust_remote_code)
    needs_template = any(s.type in CHAT_TYPES for s in recipe.datasets)
    template = templates.template_for(recipe, tokenizer) if needs_template else None
    num_proc = recipe.dataset_num_proc or os.cpu_count() or 1
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="newt-prepare-") as tmp:
        parts = []
        for i, spec in enumerate(recipe.datasets):
            raw = datasets.load_from_disk(str(source_dir(run.upstream["dataset"], i)))
            run.log(f"prepared: datasets[{i}] {spec.path}: tokenizing {len(raw)} rows")
            parts.append(tokenize_source(raw, recipe, spec, i, tokenizer, template, num_proc=num_proc,
                                         cache_dir=tmp, fingerprint=f"{run.key[:24]}-{i}"))
            run.log(f"prepared: datasets[{i}] {spec.path}: {len(raw)} rows tokenized")
        merged = datasets.concatenate_datasets(parts)
        status = column(merged, "status")
        counts = {
            "rows_in": len(status),
            "too_long": int((status == TOO_LONG).sum()),
            "truncated": int(column(merged, "truncated").sum()),
            "zero_supervision_as_written": int((status == ZERO_AS_WRITTEN).sum()),
            "zero_supervision_after_truncation": int((status == ZERO_AFTER_TRUNCATION).sum()),
        }
        if counts["zero_supervision_as_written"] and not recipe.allow_zero_supervision_rows:
            raise PrepareError(zero_supervision_message(merged, status, recipe))
        keep = np.flatnonzero(status == KEPT)
        if recipe.dataset_exact_deduplication:
            keep = first_occurrences(merged, keep)
        counts["duplicates"] = int((status == KEPT).sum() - len(keep))
        if not len(keep):
            raise PrepareError(
                f"prepared: no row is left to train on ({counts}); check sequence_len, excess_length_strategy "
                f"and roles_to_train"
            )
        run.log(f"prepared: auditing masks; {len(keep)} rows kept of {len(status)}")
        report, problems = masking_report(merged, keep, recipe, tokenizer, template)
        if problems:
            raise PrepareError("prepared: " + "\n".join(problems))

        order = np.random.default_rng(recipe.seed).permutation(keep) if recipe.shuffle_merged_datasets else keep
        n_val = held_out_count(len(order), recipe.val_set_size)
        if n_val >= len(order):
            raise PrepareError(
                f"val_set_size {recipe.val_set_size} leaves no training rows out of {len(order)}; lower it")
        out_cols = ["input_ids", "labels", "messages", "source"] + (["images"] if recipe.processor_type else [])
        lengths, supervised = column(merged, "length"), column(merged, "supervised")
        splits = {"train": (merged, order[n_val:], out_cols)}
        if recipe.sample_packing:
            from newt.packing import pack_dataset

            packed, bin_order, report["packing"] = pack_dataset(merged, order[n_val:], recipe.sequence_len,
                                                                seed=recipe.seed, cache_dir=tmp)
            splits["train"] = (packed, bin_order, packed.column_names)
        if n_val:  # datasets 5.2's load_from_disk rejects an empty split: it is left out (load_prepared: empty)
            splits["validation"] = (merged, order[:n_val], out_cols)
        n_train = len(splits["train"][1])
        run.log(f"prepared: writing {n_train} train{' (packed)' if recipe.sample_packing else ''} and {n_val} "
                f"validation rows")
        write_splits(splits, Path(run.workdir) / "data", fingerprint=run.key[:24])

    report["counts"] = {**counts, "rows_kept": len(keep)}
    report["tokens"] = int(lengths[keep].sum())
    report["supervised_tokens"] = int(supervised[keep].sum())
    (Path(run.workdir) / "masking.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    meta = {
        "rows_train": n_train,
        "rows_validation": n_val,
        "tokens": report["tokens"],
        "supervised_tokens": report["supervised_tokens"],
        **{f"rows_{k}": v for k, v in report["counts"].items() if k != "rows_kept"},
    }
    for name in ("mask_preview", "audit", "supervised_tokens_per_role", "packing"):
        if report.get(name) is not None:
            meta[name] = report[name]
    return meta


def zero_supervision_message(merged, status: np.ndarray, recipe: Recipe) -> str:
    bad = np.flatnonzero(status == ZERO_AS_WRITTEN)
    sources = column(merged, "source")
    first = int(bad[0])
    src = int(sources[first])
    row_in_source = first - int(np.flatnonzero(sources == src)[0])
    example = merged[first]["messages"]
    return (
        f"prepared: {len(bad)} rows have no supervised token as written (before any truncation), first "
        f"datasets[{src}] row {row_in_source}: {example[:300]}. Nothing in them is trained with roles_to_train="
        f"{recipe.roles_to_train}. Fix the rows (e.g. a conversation without an assistant turn), change "
        f"roles_to_train / datasets[{src}].roles, or set allow_zero_supervision_rows: true to drop and count them."
    )


def first_occurrences(merged, keep: np.ndarray) -> np.ndarray:
    """Exact deduplication on (input_ids, labels): the first row of each digest, in merged order."""
    digests = merged.data.column("digest")
    seen: set[bytes] = set()
    out = []
    for start in range(0, len(keep), 100_000):
        idx = keep[start : start + 100_000]
        for i, d in zip(idx.tolist(), digests.take(idx).to_pylist()):
            if d not in seen:
                seen.add(d)
                out.append(i)
    return np.asarray(out, dtype=np.int64)


def masking_report(merged, keep: np.ndarray, recipe: Recipe, tokenizer: Any,
                   template: str | None) -> tuple[dict, list[str]]:
    """Audit a sample of each chat source (untruncated kept rows), plus the mask preview of the first rows.

    Returns the report and the audit's problems (each source is held to `mask_audit_max_failure_rate`)."""
    from newt import masking
    from newt.formats import CHAT_TYPES

    sources, truncated = column(merged, "source"), column(merged, "truncated")
    chat = [i for i, s in enumerate(recipe.datasets) if s.type in CHAT_TYPES]
    per_source = AUDIT_ROWS // max(len(chat), 1)
    reports, problems = [], []
    for i in chat:
        idx = keep[(sources[keep] == i) & ~truncated[keep]][:per_source]
        if not len(idx):
            continue
        rows = merged.select(idx)[:]
        convs = [json.loads(m) for m in rows["messages"]]
        masker = masker_for(recipe, recipe.datasets[i], tokenizer, template)
        reports.append(masking.audit(convs, rows["input_ids"], rows["labels"], tokenizer, masker, max_rows=None))
        # zero-supervision rows were handled before the audit (failed, or dropped and counted)
        problems += [f"datasets[{i}] {p}" for p in masking.audit_problems(
            reports[-1], max_failure_rate=recipe.mask_audit_max_failure_rate, allow_zero_supervision=True)]
    preview_rows = merged.select(keep[:3])[:]
    out: dict[str, Any] = {
        "mask_preview": masking.mask_preview_markdown(preview_rows["input_ids"], preview_rows["labels"], tokenizer,
                                                      rows=3),
    }
    if reports:
        out["audit"] = combine_audits(reports)
        out["supervised_tokens_per_role"] = out["audit"]["supervised_tokens_per_role"]
    return out, problems


def combine_audits(reports: list[dict]) -> dict:
    checked = sum(r["rows_checked"] for r in reports)
    failures = [f for r in reports for f in r["failures"]]
    roles: dict[str, int] = {}
    for r in reports:
        for role, n in r["supervised_tokens_per_role"].items():
            roles[role] = roles.get(role, 0) + n
    return {
        "rows_checked": checked,
        "rows_total": sum(r["rows_total"] for r in reports),
        "failures": failures[:20],
        "failure_count": len(failures),
        "failure_rate": len(failures) / checked if checked else 0.0,
        "zero_supervision_rows": sum(r["zero_supervision_rows"] for r in reports),
        "zero_supervision_examples": [],
        "supervised_tokens_per_role": roles,
        "dropped_message_count": sum(r["dropped_message_count"] for r in reports),
        "dropped_messages": [m for r in reports for m in r["dropped_messages"]][:20],
    }


def held_out_count(n: int, val_set_size: float) -> int:
    if val_set_size <= 0:
        return 0
    return int(val_set_size) if val_set_size >= 1 else max(1, int(round(n * val_set_size)))


def load_prepared(path: Path, split: str):
    import datasets

    splits = datasets.load_from_disk(str(Path(path) / "data"))
    if split not in splits:  # val_set_size 0: no held-out rows
        return splits["train"].select([])
    return splits[split]
