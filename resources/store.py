"""The artifact store as a Dagster resource: an fsspec root URL plus its storage options."""

from __future__ import annotations

import json
import os
from typing import Any

import dagster as dg

from newt.cache import Store

DEFAULT_STORE = ".newt/store"


class NewtStore(dg.ConfigurableResource):
    """Root of the content-addressed store: a local folder or an fsspec URL (s3://, gs://, az://).

    Options may use `${env:NAME}` for secrets; they are expanded when the store is opened, never stored.
    """

    root: str = DEFAULT_STORE
    storage_options: dict[str, Any] = {}

    @classmethod
    def from_env(cls) -> NewtStore:
        """NEWT_STORE (root URL) and NEWT_STORE_OPTIONS (JSON object) from the environment, else the default."""
        options = json.loads(os.environ.get("NEWT_STORE_OPTIONS") or "{}")
        return cls(root=os.environ.get("NEWT_STORE") or DEFAULT_STORE, storage_options=options)

    def open(self) -> Store:
        from newt.sources import resolve_storage_options

        return Store(self.root, resolve_storage_options(dict(self.storage_options), "NEWT_STORE_OPTIONS"))
