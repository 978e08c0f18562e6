"""The artifact store as a Dagster resource: an fsspec root URL plus its storage options."""

from __future__ import annotations

from typing import Any

import dagster as dg

from newt.cache import DEFAULT_STORE, Store, store_settings_from_env


class NewtStore(dg.ConfigurableResource):
    """Root of the content-addressed store: a local folder or an fsspec URL (s3://, gs://, az://).

    Options may use `${env:NAME}` for secrets; they are expanded when the store is opened, never stored.
    """

    root: str = DEFAULT_STORE
    storage_options: dict[str, Any] = {}

    @classmethod
    def from_env(cls) -> NewtStore:
        """NEWT_STORE (root URL) and NEWT_STORE_OPTIONS (JSON object) from the environment, else the default."""
        root, options = store_settings_from_env()
        return cls(root=root, storage_options=options)

    def open(self) -> Store:
        from newt.sources import resolve_storage_options

        return Store(self.root, resolve_storage_options(dict(self.storage_options), "NEWT_STORE_OPTIONS"))
