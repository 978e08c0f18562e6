"""The `prepared` artifact's Arrow I/O: fresh memory maps over a dataset's files, gathering rows file by file, and
writing the train/validation splits as the shards `datasets.load_from_disk` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Rows per map call and per written shard. Every chunk is read through a fresh memory map that is released after
# it, so the file pages a process keeps resident are bounded by a window, not by the dataset (docs/prepare-speed.md).
WINDOW = 100_000


def arrow_files(ds) -> list[str] | None:
    """The Arrow files holding `ds`'s rows, in row order; None when `ds` is in memory or a subset of them.

    Callers pass plain rows (a map's output, a concatenation of those), never a reordering `select`: public
    `datasets` API does not tell a permutation of a table's rows from the table, so that is the callers' promise."""
    files = [f["filename"] for f in ds.cache_files]
    if not files or ds.data.num_rows != len(ds):  # in memory, or a selection of fewer rows than the files hold
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
    `datasets.load_from_disk` reads, one Arrow shard per WINDOW rows, written by `DatasetDict.save_to_disk`.

    Saving the shuffled rows directly reads them through one memory map held for the whole write: for a
    2 M-conversation dataset that left 7.4 GiB of file pages resident. So the rows are first put in order, WINDOW at a
    time, each window gathered file by file (`gather`) into an Arrow file of its own (pyarrow's IPC writer, the format
    `datasets` memory-maps); save_to_disk then reads those in order. With more than one shard it writes them in worker
    processes, whose maps go with each shard, so this process never holds the pages. `fingerprint` (from the stage
    key) is the saved datasets' fingerprint, so the folder is byte-identical run to run."""
    import shutil

    import datasets
    import pyarrow as pa
    from datasets.table import ConcatenationTable, MemoryMappedTable

    if out.exists():  # a crashed earlier attempt: never mix its shards with these
        shutil.rmtree(out)
    ordered = out.parent / f".{out.name}-ordered"
    shutil.rmtree(ordered, ignore_errors=True)
    ordered.mkdir(parents=True)
    parts, num_shards = {}, {}
    for name, (rows, order, columns) in splits.items():
        files = arrow_files(rows)
        sizes = [datasets.Dataset.from_file(f).num_rows for f in files or ()]
        if files is None or sum(sizes) != len(rows):  # the map and packing always write files; anything else is a bug
            raise RuntimeError(f"prepared: the {name} rows are not the plain Arrow files they should be ({files})")
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        features = datasets.Features({c: rows.features[c] for c in columns})
        schema = features.arrow_schema  # carries the features, so the files load without a cast
        n_shards = max(1, -(-len(order) // WINDOW))
        tables = []
        for k in range(n_shards):
            idx = np.asarray(order[k * WINDOW:(k + 1) * WINDOW], dtype=np.int64)
            path = ordered / f"{name}-{k:05d}.arrow"
            table = gather(files, offsets, idx, columns).cast(schema)
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                writer.write_table(table)
            del table
            tables.append(MemoryMappedTable.from_file(str(path)))
        table = tables[0] if len(tables) == 1 else ConcatenationTable.from_tables(tables)
        parts[name] = datasets.Dataset(table, info=datasets.DatasetInfo(features=features),
                                       fingerprint=f"{fingerprint}-{name}")
        num_shards[name] = n_shards
    several = max(num_shards.values()) > 1
    datasets.DatasetDict(parts).save_to_disk(str(out), num_shards=num_shards, num_proc=2 if several else None)
    del parts, tables, table
    shutil.rmtree(ordered)


def column(ds, name: str) -> np.ndarray:
    """An Arrow column as numpy, without Python objects (ds must have no indices mapping)."""
    return ds.data.column(name).to_numpy()


def held_out_count(n: int, val_set_size: float) -> int:
    if val_set_size <= 0:
        return 0
    return int(val_set_size) if val_set_size >= 1 else max(1, int(round(n * val_set_size)))
