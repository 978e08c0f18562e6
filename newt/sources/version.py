"""Content versions of a dataset source, without downloading it.

Local files: sha256 of the bytes (cached by absolute path, size and mtime, so a big file is hashed once).
Object stores: the checksum the store already keeps — S3 ETag, GCS md5 (generation for composite
objects), Azure Content-MD5 (ETag when the blob has none). Hub datasets: the commit sha.
Several files: sha256 over the sorted (path, version) lines, so adding, removing or renaming a file
also changes the version.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from newt.digest import file_sha256
from newt.sources.errors import SourceError, redact_url
from newt.sources.files import DataFile, Located, locate
from newt.sources.hub import hub_commit
from newt.sources.options import short_error

_CHUNK = 1 << 20
# Kinds of version computed from the bytes themselves (a hub commit sha is git's hash of the tree): the same bytes
# anywhere have the same version. The others (a GCS generation, an ETag) only tell apart the versions of one object,
# so a key needs the object's location beside them (`identity`).
CONTENT_KINDS = frozenset({"sha256", "md5", "git-blob", "hub"})


def _as_text(kind: str, value: Any) -> str:
    """Versions as plain text; md5 as hex whether the store sent bytes (Azure) or base64 (GCS)."""
    if kind == "md5" and isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    value = str(value).strip('"')
    if kind == "md5" and len(value) == 24 and value.endswith("=="):
        try:
            return base64.b64decode(value, validate=True).hex()
        except ValueError:
            pass
    return value


def _remote_version(file: DataFile, fs: Any) -> tuple[str, str]:
    """(kind, version) from what the store reports in `fs.info`; hashes the bytes only as a last resort."""
    info = file.info
    settings = info.get("content_settings") or {}
    md5 = (
        settings.get("content_md5") if isinstance(settings, dict) else getattr(settings, "content_md5", None)
    )
    lfs = info.get("lfs") or {}
    candidates = (
        ("sha256", lfs.get("sha256") if isinstance(lfs, dict) else None),  # hf:// files stored with LFS
        ("git-blob", info.get("blob_id")),  # other hf:// files
        ("md5", info.get("md5Hash")),  # GCS: content md5 (absent for composite objects)
        ("generation", info.get("generation")),  # GCS
        ("md5", md5),  # Azure: Content-MD5 when the uploader set it
        ("etag", info.get("ETag") or info.get("etag")),  # S3, Azure, HTTP
        ("md5", info.get("Content-MD5")),  # HTTP
    )
    for kind, value in candidates:
        if value:
            return kind, _as_text(kind, value)
    digest = hashlib.sha256()
    with fs.open(file.url, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256", digest.hexdigest()


def _combine(files: list[dict[str, Any]]) -> str:
    if len(files) == 1:
        return files[0]["version"]
    lines = "".join(f"{f['path']}\t{f['version']}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def version_of(found: Located, spec: Any, key_path: str) -> dict[str, Any]:
    """The version dict of an already located source (see `source_version`)."""
    if found.kind == "hub":
        sha = hub_commit(found.uri, getattr(spec, "revision", None), key_path)
        return {"uri": found.uri, "kind": "hub", "version": sha, "files": []}
    base = found.base.rstrip("/") + "/"
    files: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for f in found.files:
        if found.kind in ("local", "repo"):
            kind, version = "sha256", file_sha256(f.url)
        else:
            try:
                kind, version = _remote_version(f, found.fs)
            except Exception as exc:
                options = getattr(spec, "storage_options", None) or {}
                raise SourceError(
                    f"{key_path}.path",
                    f"could not read {f.url} to version it ({short_error(exc, options)})",
                    f"check that the object exists and that the credentials in {key_path}.storage_options"
                    " allow reading it",
                ) from exc
        kinds.add(kind)
        rel = f.url[len(base) :] if f.url.startswith(base) else f.url
        files.append({"path": redact_url(rel), "size": f.size, "version": version, "kind": kind})
    return {
        "uri": redact_url(found.uri),
        "kind": kinds.pop() if len(kinds) == 1 else "+".join(sorted(kinds)),
        "version": _combine(files),
        "files": files,
    }


def source_version(spec: Any, key_path: str = "dataset") -> dict[str, Any]:
    """`{"uri", "kind", "version", "files": [{path, size, version, kind}]}` for a dataset entry.

    Cheap: local files are hashed once per (path, size, mtime); object stores are asked for their
    checksum (no download); hub datasets give their commit sha.
    """
    return version_of(locate(spec, key_path), spec, key_path)


def identity(version: dict[str, Any]) -> dict[str, Any]:
    """What a cache key records of a source version: its content version, plus its normalized location only when
    the version does not come from the bytes. So the same bytes under another path or spelling (`../my/a.jsonl`,
    `/tmp/my/a.jsonl`, a moved copy) are the same input, and an ETag of one bucket never matches another's."""
    out = {"kind": version["kind"], "version": version["version"]}
    if not set(version["kind"].split("+")) <= CONTENT_KINDS:
        out["uri"] = version["uri"]
    return out
