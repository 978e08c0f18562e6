"""Two machines committing the same key to an object store (moto S3 on 127.0.0.1), each with its own bytes: the
committed artifact is always exactly one writer's complete set, never a mix (newt/cache.py, object-store commit)."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from newt.cache import MARKER, Store, parse_marker

ROUNDS = 20
FILES = {"a.bin": 40_000, "sub/b.bin": 40_000, "c.bin": 10, "d.json": 0}  # same names and sizes for both writers


def _content(writer: int, name: str, size: int) -> bytes:
    return bytes([65 + writer]) * size if size else b""  # writer 0: all "A", writer 1: all "B"


def _writer(index: int, root: str, options: dict, work: str, keys: list[str], barrier, done) -> None:
    from newt.sources import resolve_storage_options

    store = Store(root, resolve_storage_options(dict(options), "store"))
    for key in keys:
        folder = Path(work) / f"w{index}-{key}"
        for name, size in FILES.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(_content(index, name, size))
        barrier.wait(timeout=60)  # both start the commit of this key at the same moment
        store.commit("prepared", key, folder, inputs={"k": key}, metadata={"writer_index": index})
    done.put(index)


def test_two_writers_of_one_key_never_mix_their_files(s3_server, tmp_path: Path, monkeypatch) -> None:
    root = s3_server.unique_prefix() + "/store"
    keys = [f"{i:032x}" for i in range(ROUNDS)]
    ctx = mp.get_context("spawn")  # a clean interpreter per writer, as on two machines
    barrier, done = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(i, root, s3_server.storage_options, str(tmp_path), keys, barrier, done))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]

    from newt.sources import resolve_storage_options

    store = Store(root, resolve_storage_options(dict(s3_server.storage_options), "store"))
    winners = []
    for key in keys:
        found = store.lookup("prepared", key, verify_hashes=True)
        assert found.hit, (key, found.reason)
        index = found.manifest["metadata"]["writer_index"]
        _, writer = parse_marker(store.fs.cat_file(f"{store.path('prepared', key)}/{MARKER}").decode())
        assert writer == found.manifest["writer"] and found.uri.endswith(writer)
        monkeypatch.setenv("NEWT_CACHE_DIR", str(tmp_path / f"reader-{key}"))  # a fresh download per key
        local = store.local_path("prepared", key)
        got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
        assert {n: got[n] for n in FILES} == {n: _content(index, n, s) for n, s in FILES.items()}, key
        assert json.loads(got["manifest.json"])["writer"] == writer
        winners.append(index)
    # The writers really raced: in some rounds both staged a whole set under the key (else the test proves little).
    raced = 0
    for key in keys:
        staged = [p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path("prepared", key), detail=False)]
        raced += sum(s.startswith("w-") for s in staged) == 2
    print(f"rounds where both writers staged: {raced} of {ROUNDS}; winners: {winners}")
    assert raced >= 1


@pytest.mark.parametrize("text", ["abc w-../../x", "abc w-a/b"])
def test_a_marker_naming_no_valid_writer_is_corrupt(s3_server, text: str) -> None:
    from newt.sources import resolve_storage_options

    store = Store(s3_server.unique_prefix() + "/store", resolve_storage_options(dict(s3_server.storage_options)))
    store.fs.pipe_file(f"{store.path('prepared', 'k' * 32)}/{MARKER}", text.encode())
    found = store.lookup("prepared", "k" * 32)
    assert found.status == "corrupt" and "names no valid writer" in found.reason
