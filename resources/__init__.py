"""Dagster resources: where artifacts live, and how training children are launched."""

from .launcher import K8sLauncher, LocalLauncher, TrainingLauncher, launcher_from_env
from .store import DEFAULT_STORE, NewtStore

__all__ = ["DEFAULT_STORE", "K8sLauncher", "LocalLauncher", "NewtStore", "TrainingLauncher", "launcher_from_env"]
