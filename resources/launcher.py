"""How the `trained` asset runs its training child: a local `accelerate launch` subprocess, or a Kubernetes pod.

Both go through Dagster Pipes, so the child's step metrics reach the run log and its final metrics the
materialization, whichever runs it. The command is the one `newt.train` builds from the recipe (`accelerate launch
... -m newt.train.<method> --recipe ... --data ... --output ...`); a launcher only decides where it runs.

Kubernetes: the pod runs `image` (newt installed, same version). The command names local folders (the prepared
artifact, the stage's work folder), so they must exist at the same paths in the pod: mount the store — or, with an
object-store `NEWT_STORE`, `NEWT_CACHE_DIR`, where work folders and local copies live — from a ReadWriteMany volume
claim at the same path on both sides. GPU limits come from the recipe's `num_processes` and the resource's settings.
See docs/training.md for multi-GPU and multi-node.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from newt.config import Recipe


class TrainingLauncher(dg.ConfigurableResource):
    """Base class: runs a training command for an asset."""

    def launch(self, context: dg.AssetExecutionContext, recipe: Recipe, cmd: list[str], env: dict[str, str]) -> None:
        raise NotImplementedError


class LocalLauncher(TrainingLauncher):
    """`accelerate launch` as a subprocess of the Dagster run, in a Dagster Pipes session (for one process, the
    training child itself with accelerate's environment: newt/train/launch.py).

    Not `PipesSubprocessClient`: its child shares the run's process group and outlives a killed run. Here the
    child gets its own group and dies with the run (newt/train/lifetime.py); when the run is interrupted (Ctrl-C,
    SIGTERM, a cancel from the UI) the whole group is stopped before the interrupt goes on.
    """

    def launch(self, context: dg.AssetExecutionContext, recipe: Recipe, cmd: list[str], env: dict[str, str]) -> None:
        if recipe.launcher == "ray":  # the recipe asks for its cluster (issue 19): RAY_ADDRESS names it
            from .ray_launcher import RayLauncher

            return RayLauncher().launch(context, recipe, cmd, env)
        from newt.train import lifetime
        from newt.train.launch import start

        with dg.open_pipes_session(context=context, context_injector=dg.PipesTempFileContextInjector(),
                                   message_reader=dg.PipesTempFileMessageReader()) as session:
            # One local process: the child itself, with the environment accelerate's launcher would give it (on
            # the CPU a fork of the warm training process, newt/train/warm.py).
            proc, cmd = start(cmd, {**env, **session.get_bootstrap_env_vars()})
            try:
                proc.wait()
            finally:  # a no-op after a normal exit; on an interrupt it stops accelerate and every rank
                lifetime.stop(proc)
        if proc.returncode != 0:
            raise lifetime.ChildFailed(proc.returncode, cmd)


# Variables of the parent's environment that the pod needs (the rest of the parent's environment stays here).
POD_ENV = ("NEWT_STORE", "NEWT_STORE_OPTIONS", "NEWT_CACHE_DIR", "HF_HOME", "HF_TOKEN", "TOKENIZERS_PARALLELISM",
           # experiment trackers (docs/tracking.md): credentials stay in the environment, never in the recipe
           "NEWT_TRACKING_DIR", "WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_USERNAME",
           "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")


class K8sLauncher(TrainingLauncher):
    """A pod per training run through dagster-k8s's `PipesK8sClient` (`pip install 'newt[k8s]'`)."""

    image: str = Field(description="Container image with newt installed (same version as the Dagster code).")
    namespace: str | None = Field(None, description="Namespace; the current one (or `default`) when unset.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU on the nodes.")
    cpu: str | None = Field("8", description="CPU request and limit of the pod.")
    memory: str | None = Field("64Gi", description="Memory request and limit of the pod.")
    shm_size: str = Field("16Gi", description="Size of /dev/shm (NCCL and data loader workers need more than 64M).")
    store_claim: str | None = Field(None, description="PersistentVolumeClaim holding the store (ReadWriteMany).")
    store_mount: str = Field("/newt", description="Where the claim is mounted; equals the local store root.")
    node_selector: dict[str, str] = Field({}, description="Node labels the pod must match (e.g. a GPU product).")
    tolerations: list[dict[str, Any]] = Field([], description="Tolerations, e.g. for tainted GPU nodes.")
    service_account: str | None = Field(None, description="Service account the pod runs as.")
    image_pull_secrets: list[str] = Field([], description="Secrets for pulling a private image.")
    python: str = Field("python", description="Interpreter in the image (replaces the local sys.executable).")

    def pod_command(self, cmd: list[str]) -> list[str]:
        return [self.python, *cmd[1:]]

    def pod_spec(self, recipe: Recipe, cmd: list[str]) -> dict[str, Any]:
        """The pod spec for one training run: one GPU per training process, the store and shared memory mounted."""
        gpus = recipe.num_processes
        resources: dict[str, dict[str, Any]] = {"limits": {self.gpu_resource: gpus}, "requests": {}}
        for name, value in (("cpu", self.cpu), ("memory", self.memory)):
            if value:
                resources["limits"][name] = resources["requests"][name] = value
        mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
        volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}}]
        if self.store_claim:
            mounts.append({"name": "store", "mountPath": self.store_mount})
            volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": self.store_claim}})
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [{
                "name": "train",
                "image": self.image,
                "command": self.pod_command(cmd),
                "resources": resources,
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = list(self.tolerations)
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
        return spec

    def pod_env(self, env: dict[str, str]) -> dict[str, str]:
        return {k: env[k] for k in POD_ENV if k in env}

    def launch(self, context: dg.AssetExecutionContext, recipe: Recipe, cmd: list[str], env: dict[str, str]) -> None:
        try:
            from dagster_k8s import PipesK8sClient
        except ImportError:
            raise RuntimeError("K8sLauncher needs dagster-k8s; pip install 'newt[k8s]'") from None
        PipesK8sClient().run(
            context=context, namespace=self.namespace, env=self.pod_env(env),
            base_pod_meta={"labels": {"app.kubernetes.io/part-of": "newt", "newt/recipe": recipe.name}},
            base_pod_spec=self.pod_spec(recipe, cmd),
        )


def launcher_from_env() -> TrainingLauncher:
    """`NEWT_LAUNCHER=k8s` (+ `NEWT_K8S_IMAGE`, optional `NEWT_K8S_NAMESPACE`, `NEWT_K8S_STORE_CLAIM`,
    `NEWT_K8S_STORE_MOUNT`) runs training in pods; `ray://HOST:PORT`, or `ray` with RAY_ADDRESS, on a Ray cluster
    (resources/ray_launcher.py); `local`, or unset, runs it locally."""
    import os

    kind = os.environ.get("NEWT_LAUNCHER", "local")
    if kind == "local":
        return LocalLauncher()
    if kind == "ray" or kind.startswith("ray://"):  # Ray cluster: ray://HOST:PORT, or `ray` with RAY_ADDRESS
        from .ray_launcher import RayLauncher

        return RayLauncher(address=kind if kind.startswith("ray://") else None)
    if kind != "k8s":
        raise ValueError(f"NEWT_LAUNCHER={kind!r}; use local, k8s, ray (with RAY_ADDRESS) or ray://HOST:PORT")
    image = os.environ.get("NEWT_K8S_IMAGE")
    if not image:
        raise ValueError("NEWT_LAUNCHER=k8s needs NEWT_K8S_IMAGE, the image with newt installed")
    return K8sLauncher(image=image, namespace=os.environ.get("NEWT_K8S_NAMESPACE"),
                       store_claim=os.environ.get("NEWT_K8S_STORE_CLAIM"),
                       store_mount=os.environ.get("NEWT_K8S_STORE_MOUNT", "/newt"))
