"""Dagster resources: where artifacts live, and how training children are launched."""

from resources.launcher import K8sLauncher, LocalLauncher, TrainingLauncher, launcher_from_env
from resources.ray_launcher import RayLauncher
from resources.store import DEFAULT_STORE, NewtStore

__all__ = ["DEFAULT_STORE", "K8sLauncher", "LocalLauncher", "NewtStore", "RayLauncher", "TrainingLauncher",
           "launcher_from_env"]
