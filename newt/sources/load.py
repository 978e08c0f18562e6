"""Reading a dataset entry's rows with `datasets.load_dataset`."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from newt.sources.errors import SourceError
from newt.sources.files import DataFile, Located, locate
from newt.sources.hub import load_hub
from newt.sources.options import resolve_storage_options, short_error

_SNIPPET = 80
_LISTING_CACHE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}


def _first_bad_json_row(files: list[DataFile], options: dict[str, Any]) -> tuple[str, int, str, str] | None:
    """(file, line number, parser message, the line) of the first row that is not valid JSON, or None."""
    import fsspec

    for f in files:
        with fsspec.open(
            f.url, "rt", compression="infer", encoding="utf-8", errors="replace", **options
        ) as fh:
            text = fh.read()
        stripped = text.lstrip()
        if stripped[:1] == "[" or (stripped[:1] == "{" and "\n" not in stripped.rstrip()):
            try:  # one JSON document (a list of rows, or a single object)
                json.loads(text)
                continue
            except json.JSONDecodeError as exc:
                line = text.splitlines()[exc.lineno - 1] if text.splitlines() else ""
                return f.url, exc.lineno, exc.msg, line
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f.url, number, exc.msg, line
    return None


def _describe(found: Located) -> str:
    names = ", ".join(f.url for f in found.files[:3])
    return names + (f" and {len(found.files) - 3} more" if len(found.files) > 3 else "")


def _read_error(found: Located, exc: Exception, options: dict[str, Any], key_path: str) -> SourceError:
    if "corresponds to no data" in str(exc):  # every file held only blank lines
        return _empty(found, key_path)
    if type(exc).__name__ == "OfflineModeIsEnabled":
        return SourceError(
            f"{key_path}.path",
            f"{found.uri} is remote but HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set, and `datasets` then"
            " refuses every URL (loopback servers included)",
            "unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE for runs that read object stores or URLs",
        )
    if found.format == "json":
        try:
            bad = _first_bad_json_row(found.files, options)
        except Exception:
            bad = None
        if bad is not None:
            url, line, msg, text = bad
            shown = text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"
            return SourceError(
                f"{key_path}.path",
                f"{url} line {line} is not valid JSON ({msg}): {shown!r}",
                "fix or delete that line; each line of a .jsonl file must be one JSON object",
            )
    return SourceError(
        f"{key_path}.path",
        f"could not read {_describe(found)} as {found.format} ({short_error(exc, options)})",
        f"check that the files are valid {found.format} with the same columns in every row; set"
        f" {key_path}.ds_type if the file extension does not say the format",
    )


def _empty(found: Located, key_path: str) -> SourceError:
    return SourceError(
        f"{key_path}.path",
        f"the dataset is empty: {_describe(found)} holds no rows",
        f"point {key_path}.path at a file with at least one row (check that the upload or export finished)",
    )


def load_source(
    spec: Any,
    key_path: str = "dataset",
    cache_dir: str | None = None,
    version: dict[str, Any] | None = None,
):
    """The rows of a dataset entry as a `datasets.Dataset` (one split: `spec.split`).

    Files are read with the packaged `datasets` builder of their format; hub names (and local
    folders laid out like hub datasets) with `load_dataset(path, name=..., split=...)`. Pass the
    `version` from `source_version` to pin a hub dataset to the commit it reported.
    """
    import datasets

    found = locate(spec, key_path)
    if found.kind in ("hub", "repo"):
        revision = getattr(spec, "revision", None)
        if found.kind == "hub" and version and version.get("kind") == "hub":
            revision = version["version"]
        ds = load_hub(found.uri, spec, revision, cache_dir, key_path)
        if len(ds) == 0:
            raise _empty(found, key_path)
        return ds

    raw_options = dict(getattr(spec, "storage_options", None) or {})
    options = resolve_storage_options(raw_options, f"{key_path}.storage_options")
    if all(f.size == 0 for f in found.files):
        raise _empty(found, key_path)
    if found.kind == "remote" and found.protocol in _LISTING_CACHE_PROTOCOLS:
        # Listings cached in a long-lived fsspec instance keep an object's old ETag after it is replaced,
        # and `datasets` keys its download and Arrow caches by that ETag: it would serve the old rows.
        options = {"use_listings_cache": False, **options}
    split = spec.split
    split_name = split.split("[", 1)[0] or "train"
    # load_dataset adds an "hf" key to the dict it is given: never hand it the caller's.
    remote_options = copy.deepcopy(options) if found.kind == "remote" else None
    # Without an ETag (plain HTTP servers) the download cache cannot tell a replaced file: fetch it again.
    etagless = found.kind == "remote" and not all(
        f.info.get("ETag") or f.info.get("etag") for f in found.files
    )
    try:
        ds = datasets.load_dataset(
            found.format,
            data_files={split_name: [f.url for f in found.files]},
            split=split,
            cache_dir=cache_dir,
            # `datasets` caches downloaded data files by URL alone unless told to use the ETag
            # (builder.py: "We don't use etag for data files"), so a replaced object would load stale.
            # The options go here too: load_dataset hands its own download_config to the download step.
            download_config=datasets.DownloadConfig(
                cache_dir=os.path.join(cache_dir, "downloads") if cache_dir else None,
                use_etag=True,
                force_download=etagless,
                storage_options=copy.deepcopy(remote_options) if remote_options else {},
            ),
            storage_options=remote_options,
            download_mode="force_redownload" if etagless else None,
            # ...and the new rows must not be checked against the split sizes recorded for the old file.
            verification_mode="no_checks" if etagless else None,
        )
    except SourceError:
        raise
    except Exception as exc:
        raise _read_error(found, exc, options, key_path) from exc
    if len(ds) == 0:
        raise _empty(found, key_path)
    return ds
