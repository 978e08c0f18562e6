"""Content digests of local files and folders: what keys and manifests record about bytes outside the store.

A module of its own so that the store (`newt.cache`) and the sources (`newt.sources`) both use it without importing
each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from newt.home import cache_dir


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file, reusing the digest while (path, size, mtime_ns) are unchanged, so a big unchanged
    file is hashed once per machine."""
    path = os.path.abspath(path)
    st = os.stat(path)
    entry = cache_dir() / "sha256" / (hashlib.sha256(path.encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached["path"] == path and cached["size"] == st.st_size and cached["mtime_ns"] == st.st_mtime_ns:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    value = digest.hexdigest()
    record = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return value


def dir_digest(folder: str | Path, names: set[str] | None = None) -> dict[str, str]:
    """{relative path: sha256} of the files in a local folder (optionally only those with the given names)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and (names is None or p.name in names) and not p.name.startswith("."):
            out[p.relative_to(folder).as_posix()] = file_sha256(p)
    return out
