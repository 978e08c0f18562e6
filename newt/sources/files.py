"""Where a dataset entry points and which data files it means.

`path` is one of: a local file, folder or glob; an fsspec URL (s3://, gs://, az://, abfs://, https://, …);
or a Hugging Face hub dataset name ("org/name"). Folders and globs mean every data file below them,
sorted, so the same folder always gives the same list (and the same content version).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from newt.sources.errors import SourceError
from newt.sources.options import open_store_fs, redact, scrub, short_error

Format = Literal["json", "parquet", "csv", "arrow"]
# Recipe spellings (Axolotl's `ds_type`) → the `datasets` packaged builder that reads them.
FORMATS: dict[str, Format] = {
    "json": "json", "jsonl": "json", "ndjson": "json",
    "parquet": "parquet", "csv": "csv", "arrow": "arrow",
}  # fmt: skip
EXTENSIONS: dict[str, Format] = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow",
}  # fmt: skip
# Compression `datasets` (through fsspec) undoes by itself.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_GLOB = re.compile(r"[*?\[]")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HTTP = ("http", "https")


@dataclass
class DataFile:
    """One data file: its full URL or absolute path, size, and what `fs.info` said about it."""

    url: str
    size: int
    info: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Located:
    """What a dataset entry resolves to."""

    kind: Literal["local", "remote", "hub", "repo"]  # repo: a local folder laid out like a hub dataset
    uri: str  # absolute local path, URL, or hub name
    protocol: str = "file"
    base: str = ""  # the folder file paths are reported relative to
    files: list[DataFile] = field(default_factory=list)
    format: Format | None = None
    fs: Any = field(default=None, repr=False)


def _strip_compression(name: str) -> str:
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def format_of(name: str) -> Format | None:
    """The format a file name implies (`a.jsonl.gz` → json), or None."""
    if "://" in name:
        name = name.split("?", 1)[0].split("#", 1)[0]  # a signed URL's query says nothing of the format
    return EXTENSIONS.get(os.path.splitext(_strip_compression(name.lower()))[1])


def _protocol(path: str) -> str | None:
    return path.split("://", 1)[0].lower() if "://" in path else None


def is_hub_name(path: str) -> bool:
    """True for "org/name" or "name" that is not a local file, a URL or a data file name."""
    return (
        _protocol(path) is None
        and _HUB_NAME.match(path) is not None
        and format_of(path) is None
        and not os.path.exists(os.path.expanduser(path))
    )


def explicit_format(spec: Any, key_path: str) -> Format | None:
    ds_type = getattr(spec, "ds_type", None)
    if ds_type is None:
        return None
    try:
        return FORMATS[ds_type.lower()]
    except KeyError:
        raise SourceError(
            f"{key_path}.ds_type",
            f"unknown format {ds_type!r}",
            f"use one of {', '.join(sorted(FORMATS))}, or leave ds_type out to infer it from the file extension",
        ) from None


def _patterns(spec: Any) -> list[str]:
    data_files = getattr(spec, "data_files", None)
    if data_files is None:
        return []
    return [data_files] if isinstance(data_files, str) else list(data_files)


def _join(root: str, pattern: str) -> str:
    if _protocol(pattern) or os.path.isabs(pattern):
        return pattern
    return root.rstrip("/") + "/" + pattern


def _is_data_file(rel: str, fmt: Format | None) -> bool:
    parts = rel.replace("\\", "/").split("/")
    if any(p.startswith((".", "_")) for p in parts):  # .git, .cache, _SUCCESS, _delta_log …
        return False
    found = format_of(parts[-1])
    return found is not None and (fmt is None or found == fmt)


def _is_repo(folder: str, spec: Any) -> bool:
    """A local folder is read like a hub dataset when a config name is asked for or its README declares configs.

    That is the layout `hf download --repo-type dataset NAME --local-dir DIR` leaves, so a downloaded copy of a
    hub dataset loads exactly as the hub name would (splits and configs from the dataset card).
    """
    if getattr(spec, "name", None):
        return True
    readme = os.path.join(folder, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8", errors="replace") as f:
        head = f.read(64_000)
    return head.startswith("---") and re.search(r"(?m)^configs:", head.split("\n---", 1)[0]) is not None


def _store_error(key_path: str, url: str, exc: BaseException, options: dict[str, Any]) -> SourceError:
    """Turn a storage client's exception into a message that names the object and the fix."""
    text = short_error(exc, options)
    shown = redact(options)
    lowered = text.lower()
    denied = isinstance(exc, PermissionError) or any(
        word in lowered
        for word in ("forbidden", "accessdenied", "access denied", "authenticationfailed", "unauthorized",
                     "invalidaccesskeyid", "signaturedoesnotmatch", "403", "401", "credential", "authenticate")
    )  # fmt: skip
    if denied:
        return SourceError(
            f"{key_path}.path",
            f"access to {url} was refused ({text})",
            f"check the credentials in {key_path}.storage_options (now {shown}) and that the environment"
            " variables they name hold a valid key for this store",
        )
    return SourceError(
        f"{key_path}.path",
        f"could not read {url} ({text})",
        f"check the URL and {key_path}.storage_options (now {shown}): endpoint, region, credentials",
    )


def _missing(key_path: str, url: str, fs: Any, options: dict[str, Any]) -> SourceError:
    protocol = _protocol(url)
    if protocol and protocol not in _HTTP + ("file", "local"):
        bucket = fs._strip_protocol(url).split("/", 1)[0]
        try:
            bucket_exists = fs.exists(bucket)
        except Exception as exc:  # the bucket check itself failed: report that (often credentials)
            return _store_error(key_path, url, exc, options)
        if not bucket_exists:
            return SourceError(
                f"{key_path}.path",
                f"bucket or container {bucket!r} does not exist (reading {url})",
                f"create it, or fix the bucket name in {key_path}.path; check the endpoint in"
                f" {key_path}.storage_options if the bucket is on a non-default server",
            )
        return SourceError(
            f"{key_path}.path",
            f"no object or folder at {url} (bucket {bucket!r} exists)",
            f"check the key after the bucket name in {key_path}.path (list the bucket to see what is there)",
        )
    if protocol in _HTTP:
        return SourceError(
            f"{key_path}.path",
            f"no file at {url} (the server answered Not Found)",
            f"check the URL in {key_path}.path",
        )
    return SourceError(
        f"{key_path}.path",
        f"no file or folder at {url}",
        f"check {key_path}.path; relative paths are read from the current directory ({os.getcwd()})",
    )


def locate(spec: Any, key_path: str = "dataset") -> Located:
    """Resolve a dataset entry to its kind and, for files, the sorted list of data files it means."""
    path: str = spec.path
    fmt = explicit_format(spec, key_path)
    patterns = _patterns(spec)
    options = dict(getattr(spec, "storage_options", None) or {})
    protocol = _protocol(path)
    if protocol is None and is_hub_name(path) and not _GLOB.search(path):
        return Located(kind="hub", uri=path, protocol="hub", format=fmt)

    if protocol is None:
        path = os.path.abspath(os.path.expanduser(path))
    try:
        fs, root = open_store_fs(path, options, f"{key_path}.storage_options")
    except SourceError:
        raise
    except (ImportError, ValueError) as exc:
        raise SourceError(
            f"{key_path}.path",
            f"no filesystem for {path!r} ({scrub(str(exc), options)})",
            "use a local path or an fsspec URL such as s3://bucket/key, gs://bucket/key, az://container/key,"
            " https://host/file.jsonl; check the storage_options keys for that store",
        ) from exc
    fs.invalidate_cache()  # an instance reused from fsspec's cache may hold listings from before a change
    is_local = fs.protocol in ("file", "local") or "file" in fs.protocol
    kind = "local" if is_local else "remote"
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def full(p: str) -> str:  # in the user's spelling: az:// stays az:// (adlfs would say abfs://)
        if is_local or "://" in p:
            return p
        return f"{protocol}://{p}" if protocol else fs.unstrip_protocol(p)

    base = root.rstrip("/")

    try:
        if patterns:
            matched: dict[str, dict] = {}
            for pattern in patterns:
                target = _join(root, fs._strip_protocol(pattern) if _protocol(pattern) else pattern)
                try:
                    hits = (
                        fs.glob(target, detail=True) if _GLOB.search(pattern) else {target: fs.info(target)}
                    )
                except FileNotFoundError:
                    hits = {}
                if not hits:
                    raise SourceError(
                        f"{key_path}.data_files",
                        f"{pattern!r} matches no file under {full(root)}",
                        f"check the pattern; data_files are relative to {key_path}.path",
                    )
                matched.update(hits)
            entries = matched
        elif _GLOB.search(root):
            base = root[: _GLOB.search(root).start()].rsplit("/", 1)[0]
            entries = fs.glob(root, detail=True)
            entries = {p: i for p, i in entries.items() if i.get("type") != "directory"}
            if not entries:
                raise SourceError(
                    f"{key_path}.path",
                    f"{full(root)} matches no file",
                    f"check the pattern in {key_path}.path",
                )
        else:
            info = fs.info(root)
            if info.get("type") == "directory" and kind == "local" and _is_repo(root, spec):
                found = fs.find(root, detail=True)
                base = root.rstrip("/")
                entries = {
                    p: i for p, i in found.items()
                    if _is_data_file(p[len(base) :].lstrip("/"), None) or p == f"{base}/README.md"
                }  # fmt: skip
                kind = "repo"
            elif info.get("type") == "directory":
                base = root.rstrip("/")
                found = fs.find(root, detail=True)
                entries = {p: i for p, i in found.items() if _is_data_file(p[len(base) :].lstrip("/"), fmt)}
                if not entries:
                    wanted = fmt or "jsonl/json/parquet/csv/arrow"
                    raise SourceError(
                        f"{key_path}.path",
                        f"the folder {full(root)} holds no {wanted} data files ({len(found)} other files)",
                        f"put data files there, point {key_path}.path at a file, or set {key_path}.data_files",
                    )
            else:
                entries = {root: info}
                base = root.rsplit("/", 1)[0]
    except SourceError:
        raise
    except FileNotFoundError:
        raise _missing(key_path, full(root), fs, options) from None
    except Exception as exc:
        raise _store_error(key_path, full(root), exc, options) from exc

    files = [
        DataFile(url=full(p), size=int(i.get("size") or 0), info=i)
        for p, i in sorted(entries.items())
        if i.get("type") != "directory"
    ]
    if fmt is None and kind != "repo":
        kinds = {format_of(f.url) for f in files}
        if None in kinds or len(kinds) != 1:
            names = ", ".join(os.path.basename(f.url) for f in files[:5])
            raise SourceError(
                f"{key_path}.ds_type",
                f"cannot tell the format of {names} (expected one of .jsonl .json .parquet .csv .arrow,"
                f" all files the same)",
                f"set {key_path}.ds_type to one of {', '.join(sorted(FORMATS))}, or choose files of one"
                f" format with {key_path}.data_files",
            )
        fmt = kinds.pop()
    return Located(kind=kind, uri=full(root), protocol=proto, base=full(base), files=files, format=fmt, fs=fs)
