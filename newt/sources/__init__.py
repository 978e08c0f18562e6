"""Data sources for the `dataset` stage: local files and folders, fsspec URLs, hub dataset names.

    source_version(spec) -> {"uri", "kind", "version", "files"}   cheap content version
    load_source(spec) -> datasets.Dataset                          the rows
    resolve_storage_options / redact                               ${env:NAME} secrets in, never out

`spec` is any object with the recipe's dataset attributes: path, split, data_files, name, ds_type,
storage_options (newt's `DatasetSpec`, or a SimpleNamespace in tests).
"""

from newt.sources.errors import SourceError, redact_url
from newt.sources.files import FORMATS, Located, format_of, is_hub_name, locate
from newt.sources.hub import hub_commit
from newt.sources.load import load_source
from newt.sources.options import literal_secrets, open_store_fs, redact, resolve_storage_options, scrub
from newt.sources.version import file_sha256, identity, source_version

__all__ = [
    "FORMATS",
    "Located",
    "SourceError",
    "file_sha256",
    "format_of",
    "hub_commit",
    "is_hub_name",
    "literal_secrets",
    "load_source",
    "locate",
    "open_store_fs",
    "redact",
    "redact_url",
    "resolve_storage_options",
    "scrub",
    "identity",
    "source_version",
]
