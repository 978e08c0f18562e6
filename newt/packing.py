"""Sample packing: rows → `sequence_len` bins, each example keeping its own attention span.

Bins are filled best-fit-decreasing (longest row first, into the fullest bin it still fits). A packed row holds
its examples' `input_ids` and `labels` back to back plus `seq_lengths`, TRL's column for packed rows: at training
time `DataCollatorForLanguageModeling(padding_free=True)` turns them into position ids that restart at 0 per
example. transformers derives the attention from those position ids — varlen kernels with flash-attn on GPU, a
block-diagonal mask with sdpa on CPU — so no token attends across examples (tests/test_packing.py checks that
packed and unpacked losses agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Indices into `lengths`, grouped into bins of total length <= capacity. Deterministic (stable by index).

    Bins are kept in buckets by remaining space, so placing a row looks at most `capacity` buckets and never
    scans the bins themselves: O(n log n + n * capacity) worst case, O(n log n) in practice.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"a row of {int(lengths.max())} tokens does not fit a bin of {capacity}")
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    by_space: list[list[int]] = [[] for _ in range(capacity + 1)]  # remaining space -> bin ids (a stack)
    space: list[int] = []
    for i, n in zip(order.tolist(), lengths[order].tolist()):
        target = -1
        for s in range(n, capacity + 1):
            if by_space[s]:
                target = by_space[s].pop()
                break
        if target < 0:
            target = len(bins)
            bins.append([])
            space.append(capacity)
        bins[target].append(i)
        space[target] -= n
        by_space[space[target]].append(target)
    return bins


def fill(lengths: np.ndarray, bins: list[list[int]], capacity: int) -> float:
    return float(np.asarray(lengths).sum() / (len(bins) * capacity)) if bins else 0.0


class _Packer:
    def __init__(self, rows: Any):
        self.rows = rows

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
        for members in batch["members"]:
            got = self.rows[members]
            out["input_ids"].append([t for ids in got["input_ids"] for t in ids])
            out["labels"].append([t for lab in got["labels"] for t in lab])
            out["seq_lengths"].append([len(ids) for ids in got["input_ids"]])
        return out


def pack_dataset(ds: Any, lengths: np.ndarray, capacity: int, *, seed: int, num_proc: int, cache_dir: str,
                 fingerprint: str) -> tuple[Any, dict[str, Any]]:
    """Pack `ds` (columns input_ids, labels; `lengths` its row lengths) into bins; bins shuffled by `seed`."""
    import datasets

    bins = best_fit_decreasing(lengths, capacity)
    order = np.random.default_rng(seed).permutation(len(bins))
    members = [sorted(bins[b]) for b in order.tolist()]
    index = datasets.Dataset.from_dict({"members": members})
    rows = ds.select_columns(["input_ids", "labels"])
    packed = index.map(
        _Packer(rows), batched=True, batch_size=200, remove_columns=["members"],
        features=datasets.Features({
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "seq_lengths": datasets.List(datasets.Value("int32")),
        }),
        num_proc=num_proc if num_proc > 1 and len(members) > 2000 else None,
        new_fingerprint=fingerprint, cache_file_name=f"{cache_dir}/packed.arrow", load_from_cache_file=False,
    )
    info = {"rows": len(lengths), "bins": len(bins), "capacity": capacity,
            "fill": round(fill(lengths, bins, capacity), 4)}
    return packed, info
