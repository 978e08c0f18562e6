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


# --- collating packed rows at training time (issue 20) ----------------------------------------------------------


def varlen_kernel(attn_implementation: str) -> bool:
    """Whether the attention kernel takes sequence boundaries (flash-attn's varlen path) rather than a mask."""
    return "flash" in attn_implementation


class BinCollator:
    """Packed rows → a batch of one row per bin (right-padded to the longest bin), position ids restarting at 0 for
    each example and for the padding tail, no attention mask.

    Why not TRL's padding-free collation everywhere: it concatenates the whole micro batch into ONE row; with a
    varlen kernel (flash-attn) each example then costs its own length², but through sdpa or eager transformers
    builds a block-diagonal mask over that row, and attention costs (micro batch × sequence_len)² — eight bins of
    256 tokens pay for 2048² instead of 8 × 256², which made packing slower than padding on CPU (docs/performance.md).
    Here each bin is its own batch row: transformers derives the same per-example causal mask from the position ids
    (it does so whenever no attention mask is given) at a micro-batch-size fraction of the cost.

    Each example's first token gets label -100, as in TRL's padding-free path: it is never a target in an unpacked
    row either (the shifted loss starts at the second token), and it must not be predicted from the previous example.

    `real_tokens(n)`: the real (unpadded) tokens of the first n batches it made. TRL counts a batch without an
    attention mask as `position_ids.size(1)` (right for its single padding-free row, one bin's width here), so the
    child reports this count as `num_tokens` instead (batches are consumed in the order they are made; the data
    loader may make one ahead).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.counts: list[int] = []

    def real_tokens(self, batches: int) -> int:
        return sum(self.counts[:batches])

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            lengths = [*r["seq_lengths"], width - n] if width > n else list(r["seq_lengths"])
            position_ids[i] = torch.cat([torch.arange(k) for k in lengths])
        labels[position_ids == 0] = -100
        self.counts.append(sum(len(r["input_ids"]) for r in rows))
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
