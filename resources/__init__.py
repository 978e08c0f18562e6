"""Dagster resources: where artifacts live, and how training children are launched."""

from .launcher import K8sLauncher, LocalLauncher, TrainingLauncher, launcher_from_env
from .ray_launcher import RayLauncher
from .store import DEFAULT_STORE, NewtStore

__all__ = ["DEFAULT_STORE", "K8sLauncher", "LocalLauncher", "NewtStore", "RayLauncher", "TrainingLauncher",
           "launcher_from_env"]
