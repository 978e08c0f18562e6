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

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from newt.prepare_audit import masking_report, zero_supervision_message
from newt.prepare_rows import (  # noqa: F401 - IGNORE, RowProcessor, image_base: names other modules import from here
    IGNORE,
    KEPT,
    TOO_LONG,
    ZERO_AFTER_TRUNCATION,
    ZERO_AS_WRITTEN,
    PrepareError,
    RowProcessor,
    image_base,
    tokenize_source,
)
from newt.prepare_shards import column, held_out_count, write_splits
from newt.stage import StageRun


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
    from newt.tokens import apply_tokens  # issue 16: special_tokens / tokens / eot_tokens

    apply_tokens(recipe, tokenizer)
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
        out_cols += ["audios"] if "audios" in merged.column_names else []
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
        **{k if k.startswith("rows_") else f"rows_{k}": v for k, v in report["counts"].items() if k != "rows_kept"},
    }
    for name in ("mask_preview", "audit", "supervised_tokens_per_role", "packing"):
        if report.get(name) is not None:
            meta[name] = report[name]
    return meta


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


def load_prepared(path: Path, split: str):
    import datasets

    splits = datasets.load_from_disk(str(Path(path) / "data"))
    if split not in splits:  # val_set_size 0: no held-out rows
        return splits["train"].select([])
    return splits[split]
