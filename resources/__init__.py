"""Dagster resources: where artifacts live, and how training children are launched."""

from resources.store import DEFAULT_STORE, NewtStore

__all__ = ["DEFAULT_STORE", "NewtStore"]
