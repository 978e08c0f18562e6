"""Content-addressed artifact store: stage keys, manifests, commit markers. The one module that decides caching.

Layout under the store root (any fsspec URL; local folder by default):

    <root>/<stage>/<key>/            one committed artifact: the stage's files plus
        manifest.json                files (path, size, sha256), the key's inputs in readable form, metadata
        _COMMITTED                   written last; holds the sha256 of manifest.json
    <root>/<stage>/.work-<key>/      work folder of a running or crashed build (local roots); never read as output
    <root>/.locks/<stage>-<key>.lock per-key lock (local roots)

Object stores (no rename, no lock across machines) keep each writer's complete set apart:

    <root>/<stage>/<key>/<writer>/   one writer's files, its manifest.json and its own _COMMITTED (set complete)
    <root>/<stage>/<key>/_COMMITTED  "<sha256 of that manifest> <writer>": which writer's set is the artifact

A writer uploads its set under its own prefix, then writes the top marker (one PUT, atomic). Two machines building
the same key race only on that PUT, and whichever lands last names a set that is complete on its own: files of
two writers are never read together. The losing set stays behind unreferenced (deleting it could break a reader
that read the marker a moment earlier).

A folder without `_COMMITTED`, or whose marker does not match its manifest, does not exist.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from newt import __version__
from newt.digest import file_sha256
from newt.home import cache_dir

MARKER = "_COMMITTED"
MANIFEST = "manifest.json"
KEY_LENGTH = 32  # hex chars of sha256 kept in a key: 128 bits


class CacheError(RuntimeError):
    pass


def writer_id() -> str:
    """A name no other commit uses: host, process and a random part (two processes of one host differ too)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"w-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def parse_marker(text: str) -> tuple[str, str | None]:
    """(manifest sha256, writer) of a marker; writer None: the files sit beside the marker (local roots)."""
    sha, _, writer = text.strip().partition(" ")
    return sha, (writer or None)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def compute_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:KEY_LENGTH]


# --- the store -----------------------------------------------------------------------------------------------

DEFAULT_STORE = ".newt/store"


def store_settings_from_env() -> tuple[str, dict[str, Any]]:
    """(root, storage options) from NEWT_STORE and NEWT_STORE_OPTIONS (a JSON object; `${env:NAME}` unexpanded)."""
    return os.environ.get("NEWT_STORE") or DEFAULT_STORE, json.loads(os.environ.get("NEWT_STORE_OPTIONS") or "{}")


def store_from_env() -> Store:
    """The store the CLI, the lineage tool and the Dagster resource's default all use."""
    from newt.sources import resolve_storage_options  # newt.sources imports this module

    root, options = store_settings_from_env()
    return Store(root, resolve_storage_options(options, "NEWT_STORE_OPTIONS"))




@dataclass
class Lookup:
    status: str  # "hit" | "miss" | "corrupt"
    uri: str
    manifest: dict[str, Any] | None = None
    reason: str = ""

    @property
    def hit(self) -> bool:
        return self.status == "hit"


@dataclass
class Store:
    """An artifact store rooted at an fsspec URL (`./.newt/store`, `s3://bucket/prefix`, ...)."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **dict(self.storage_options))
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self._root_path = str(Path(self._root_path).resolve())

    # paths
    def path(self, stage: str, key: str) -> str:
        return f"{self._root_path.rstrip('/')}/{stage}/{key}"

    def uri(self, stage: str, key: str) -> str:
        p = self.path(stage, key)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    # reading
    def lookup(self, stage: str, key: str, *, verify_hashes: bool = False) -> Lookup:
        base = self.path(stage, key)
        if not self.is_local:  # a long-lived fsspec instance caches listings; markers must be read fresh
            self.fs.invalidate_cache(base)
        try:
            marker, writer = parse_marker(self.fs.cat_file(f"{base}/{MARKER}").decode())
        except (FileNotFoundError, NotADirectoryError):  # the latter: a file where a folder of the path should be
            return Lookup("miss", self.uri(stage, key), reason="no commit marker")
        if writer is not None and not re.fullmatch(r"w-[A-Za-z0-9-]+", writer):
            return Lookup("corrupt", self.uri(stage, key), reason=f"{MARKER} names no valid writer ({writer!r})")
        folder = f"{base}/{writer}" if writer else base  # where the committed set lives
        uri = folder if self.is_local else self.fs.unstrip_protocol(folder)
        try:
            raw = self.fs.cat_file(f"{folder}/{MANIFEST}")
        except FileNotFoundError:
            return Lookup("corrupt", uri, reason=f"{MANIFEST} is missing although {MARKER} exists")
        if hashlib.sha256(raw).hexdigest() != marker:
            return Lookup("corrupt", uri, reason=f"{MANIFEST} does not match the sha256 recorded in {MARKER}")
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            return Lookup("corrupt", uri, reason=f"{MANIFEST} is not valid JSON ({exc})")
        if manifest.get("key") != key or manifest.get("stage") != stage:
            return Lookup("corrupt", uri, reason="manifest names another stage or key")
        if writer is not None and manifest.get("writer") != writer:
            return Lookup("corrupt", uri, reason=f"manifest was written by {manifest.get('writer')}, not {writer}")
        sizes = {}
        for info in self.fs.find(folder, detail=True).values():
            sizes[info["name"][len(folder.rstrip("/")) + 1:]] = info.get("size")
        for entry in manifest["files"]:
            if sizes.get(entry["path"]) != entry["size"]:
                return Lookup("corrupt", uri, reason=f"file {entry['path']} is missing or has the wrong size")
            if verify_hashes and self._sha256(f"{folder}/{entry['path']}") != entry["sha256"]:
                return Lookup("corrupt", uri, reason=f"file {entry['path']} does not match its sha256")
        return Lookup("hit", uri, manifest=manifest)

    def committed_folder(self, stage: str, key: str) -> str:
        """The store path holding the committed files of a key (a writer's prefix on object stores)."""
        base = self.path(stage, key)
        _, writer = parse_marker(self.fs.cat_file(f"{base}/{MARKER}").decode())
        return f"{base}/{writer}" if writer else base

    def _sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def local_path(self, stage: str, key: str) -> Path:
        """A local folder holding the committed artifact (downloaded once for remote roots)."""
        found = self.lookup(stage, key)
        if not found.hit:
            raise CacheError(
                f"no committed {stage} artifact with key {key} at {found.uri} ({found.reason}); "
                f"materialize the {stage} stage first"
            )
        if self.is_local:
            return Path(self.path(stage, key))
        local = cache_dir() / "artifacts" / stage / key
        if not (local / MARKER).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_mkdir(local.parent)))
            self.fs.get(self.committed_folder(stage, key) + "/", str(tmp) + "/", recursive=True)
            shutil.rmtree(local, ignore_errors=True)
            os.rename(tmp, local)
        return local

    # writing
    def workdir(self, stage: str, key: str) -> Path:
        """Where a build writes its files. Stable per key so a crashed build (e.g. training) can resume."""
        if self.is_local:
            return _mkdir(Path(self._root_path) / stage / f".work-{key}")
        return _mkdir(cache_dir() / "work" / stage / key)

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Per-key lock: two processes building the same key take turns; the second then finds a hit.

        Local roots use flock on a lock file under the root. Object stores have no locks; the processes of one
        machine still share the local work folder of a key (`workdir`), so they take a flock in the local cache;
        across machines, marker-last writes of the same key make a lost race harmless.
        """
        with open(self._lock_file(stage, key), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _lock_file(self, stage: str, key: str) -> Path:
        lock_dir = Path(self._root_path) / ".locks" if self.is_local else cache_dir() / "locks"
        return _mkdir(lock_dir) / f"{stage}-{key}.lock"

    @contextlib.contextmanager
    def reading(self, artifacts: list[tuple[str, str]]) -> Iterator[None]:
        """Shared locks on the (stage, key) artifacts a build reads, held while it runs: `newt gc` (which needs
        the exclusive lock to delete) never removes an artifact a running build holds."""
        with contextlib.ExitStack() as stack:
            for stage, key in artifacts:
                handle = stack.enter_context(open(self._lock_file(stage, key), "a+"))
                fcntl.flock(handle, fcntl.LOCK_SH)
            yield

    @contextlib.contextmanager
    def unused(self, stage: str, key: str) -> Iterator[bool]:
        """The key's exclusive lock if nobody builds or reads it now (True), without waiting (else False)."""
        with open(self._lock_file(stage, key), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def commit(
        self, stage: str, key: str, workdir: Path, inputs: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> Lookup:
        """Publish a finished work folder: files, then manifest, then the marker (object stores: under this
        writer's own prefix, then the top marker naming it)."""
        workdir = Path(workdir)
        writer = None if self.is_local else writer_id()
        files = [
            {"path": p.relative_to(workdir).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, MARKER)
        ]
        manifest = {
            "stage": stage,
            "key": key,
            "inputs": inputs,
            "files": files,
            "metadata": metadata or {},
            **({"writer": writer} if writer else {}),
            "newt_version": __version__,
            "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        raw = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        marker = hashlib.sha256(raw).hexdigest()
        final = self.path(stage, key)
        if self.lookup(stage, key).hit:  # someone else committed the same key meanwhile: theirs is as good
            shutil.rmtree(workdir, ignore_errors=True)
            return self.lookup(stage, key)
        if self.is_local and self.fs.exists(final):  # an uncommitted or corrupt leftover (we hold the key's lock)
            self.fs.rm(final, recursive=True)
        if self.is_local:
            (workdir / MANIFEST).write_bytes(raw)
            _fsync_tree(workdir)
            (workdir / MARKER).write_text(marker)
            os.rename(workdir, final)
        else:
            # Object stores: nothing is removed and nothing is shared. Another machine may be uploading the same
            # key right now (there is no lock across machines); this writer's files go under its own prefix, and
            # the top marker, one PUT, publishes the whole set at once.
            mine = f"{final}/{writer}"
            for entry in files:
                self.fs.put_file(str(workdir / entry["path"]), f"{mine}/{entry['path']}")
            self.fs.pipe_file(f"{mine}/{MANIFEST}", raw)
            self.fs.pipe_file(f"{mine}/{MARKER}", marker.encode())  # this set is complete (a download's check)
            self.fs.pipe_file(f"{final}/{MARKER}", f"{marker} {writer}".encode())
            shutil.rmtree(workdir, ignore_errors=True)
        # Whichever writer's marker landed last, it names a set that is complete on its own: a hit either way.
        found = self.lookup(stage, key)
        if not found.hit:
            raise CacheError(f"commit of {stage}/{key} did not verify: {found.reason}")
        return found


def _mkdir(p: Path) -> Path:
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create the folder {p} ({exc.strerror or exc}); newt needs a writable folder there: set the "
            f"store root (NEWT_STORE or the store resource's root) or NEWT_CACHE_DIR to a writable folder"
        ) from None
    return p


def _fsync_tree(folder: Path) -> None:
    # The marker must not reach disk before the files it vouches for.
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
