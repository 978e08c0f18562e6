"""Sample packing: rows → `sequence_len` bins, each example keeping its own attention span.

Bins are filled best-fit-decreasing (longest row first, into the fullest bin it still fits). A packed row holds
its examples' `input_ids` and `labels` back to back plus `seq_lengths`, TRL's column for packed rows: at training
time `DataCollatorForLanguageModeling(padding_free=True)` turns them into position ids that restart at 0 per
example. transformers derives the attention from those position ids — varlen kernels with flash-attn on GPU, a
block-diagonal mask with sdpa on CPU — so no token attends across examples (tests/test_packing.py checks that
packed and unpacked losses agree).

Rows are read and packed a window at a time (`WINDOW`), like `prepared` maps its sources, so memory stays flat
from thousands to millions of rows.
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


# Train rows packed per window: the train rows are taken in storage order, WINDOW at a time, so a window reads
# one or two of the source's Arrow files (newt.prepare.gather, one file mapped at a time) rather than a scattered
# sample of all of them; it is packed, written out and dropped before the next. Packing's resident memory is thus
# bounded by a window whatever the dataset's size (bench/packing_rss.py). Bins never span windows: at 100,000 rows
# a window loses at most one partly filled bin to the boundary. The bins are then shuffled all together by `seed`,
# when the prepared stage writes them (`write_splits` takes them in that order).
WINDOW = 100_000


def pack_window(table: Any, capacity: int) -> tuple[Any, int, int]:
    """One window's rows (an Arrow table with input_ids, labels) → its packed rows (input_ids, labels,
    seq_lengths), members of a bin in row order, plus (tokens, bins). Vectorized: the packed lists are the rows'
    values taken in bin order, cut at the bins' token totals."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = table.column("input_ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    members = [np.sort(np.asarray(b, dtype=np.int64)) for b in best_fit_decreasing(lengths, capacity)]
    flat = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    counts = np.array([len(m) for m in members], dtype=np.int64)
    rows = table.take(pa.array(flat))
    row_lengths = lengths[flat]
    bin_tokens = np.add.reduceat(row_lengths, np.r_[0, np.cumsum(counts)[:-1]]) if len(counts) else counts
    token_offsets = pa.array(np.r_[0, np.cumsum(bin_tokens)].astype(np.int32))
    out = {
        name: pa.ListArray.from_arrays(token_offsets, rows.column(name).combine_chunks().flatten())
        for name in ("input_ids", "labels")
    }
    out["seq_lengths"] = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32)),
                                                  pa.array(row_lengths.astype(np.int32)))
    return pa.table(out), int(lengths.sum()), len(members)


def pack_dataset(rows: Any, order: np.ndarray, capacity: int, *, seed: int,
                 cache_dir: str) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Pack rows `order` (indices into `rows`, a dataset of plain Arrow files with input_ids and labels) into bins
    of `capacity` tokens, WINDOW rows at a time. Returns the packed dataset (one Arrow file per window under
    `cache_dir`), the order to train its bins in (a permutation by `seed`) and the report (rows, bins, capacity,
    fill)."""
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    from newt.prepare_shards import arrow_files, gather

    files = arrow_files(rows)
    if files is None:
        raise RuntimeError("packing: the rows to pack are not plain Arrow files")  # prepare's map always writes them
    sizes = [datasets.Dataset.from_file(f).num_rows for f in files]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    features = datasets.Features({name: datasets.List(datasets.Value("int32"))
                                  for name in ("input_ids", "labels", "seq_lengths")})
    # Row numbers in storage order: the one array here that grows with the rows (int32 while they fit: half the
    # memory); a copy, as the caller's order is theirs.
    stored = np.array(order, dtype=np.int32 if offsets[-1] < 2**31 else np.int64)
    stored.sort()
    parts, tokens, n_bins = [], 0, 0
    for w, start in enumerate(range(0, len(stored), WINDOW)):
        packed, t, b = pack_window(gather(files, offsets, stored[start:start + WINDOW], ["input_ids", "labels"]),
                                   capacity)
        tokens, n_bins = tokens + t, n_bins + b
        path = f"{cache_dir}/packed-{w:05d}.arrow"
        with ArrowWriter(features=features, path=path) as writer:
            writer.write_table(packed)
            writer.finalize()
        del packed
        # Arrow's allocator (mimalloc) keeps freed pages for reuse; handing them back after each window keeps the
        # peak at one window's working set instead of letting it creep up over the windows.
        pa.default_memory_pool().release_unused()
        parts.append(path)
    ds = [datasets.Dataset.from_file(p) for p in parts]
    packed_ds = ds[0] if len(ds) == 1 else datasets.concatenate_datasets(ds)
    info = {"rows": len(order), "bins": n_bins, "capacity": capacity,
            "fill": round(tokens / (n_bins * capacity), 4) if n_bins else 0.0}
    return packed_ds, np.random.default_rng(seed).permutation(n_bins), info
