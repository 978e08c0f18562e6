"""The launcher resource: which command the `trained` asset runs, and the Kubernetes pod spec it would submit."""

from __future__ import annotations

from pathlib import Path

import pytest

from newt.config import load_recipe
from resources.launcher import K8sLauncher, LocalLauncher, launcher_from_env


def test_k8s_pod_spec_has_one_gpu_per_process_the_store_and_shared_memory(tiny_recipe_file) -> None:
    recipe = load_recipe(tiny_recipe_file(extra="num_processes: 4\n"))
    launcher = K8sLauncher(image="registry.example/newt:0.1", store_claim="newt-store", store_mount="/newt",
                           node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                           tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                           image_pull_secrets=["regcred"])
    cmd = ["/home/me/.venv/bin/python", "-m", "accelerate.commands.launch", "--num_processes", "4", "-m",
           "newt.train.sft", "--output", "/newt/trained/.work-abc"]
    spec = launcher.pod_spec(recipe, cmd)
    [container] = spec["containers"]
    assert container["command"] == ["python", *cmd[1:]]  # the image's interpreter, not ours
    assert container["image"] == "registry.example/newt:0.1"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 4, "cpu": "8", "memory": "64Gi"},
                                      "requests": {"cpu": "8", "memory": "64Gi"}}
    assert {"name": "store", "mountPath": "/newt"} in container["volumeMounts"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "newt-store"}} in spec["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in spec["volumes"]
    assert spec["restartPolicy"] == "Never"  # PipesK8sClient rejects Always; a retry is a new materialization
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu" and spec["imagePullSecrets"] == [{"name": "regcred"}]

    one = K8sLauncher(image="x", gpu_resource="amd.com/gpu", cpu=None, memory=None).pod_spec(
        load_recipe(tiny_recipe_file()), cmd)
    assert one["containers"][0]["resources"] == {"limits": {"amd.com/gpu": 1}, "requests": {}}
    assert [v["name"] for v in one["volumes"]] == ["dshm"] and "nodeSelector" not in one


def test_k8s_pod_gets_only_the_store_environment() -> None:
    env = {"NEWT_STORE": "s3://bucket/store", "HOME": "/home/me", "PATH": "/usr/bin", "HF_TOKEN": "t"}
    assert K8sLauncher(image="x").pod_env(env) == {"NEWT_STORE": "s3://bucket/store", "HF_TOKEN": "t"}


def test_launcher_is_chosen_by_environment(monkeypatch) -> None:
    monkeypatch.delenv("NEWT_LAUNCHER", raising=False)
    assert isinstance(launcher_from_env(), LocalLauncher)
    monkeypatch.setenv("NEWT_LAUNCHER", "k8s")
    with pytest.raises(ValueError, match="NEWT_K8S_IMAGE"):
        launcher_from_env()
    monkeypatch.setenv("NEWT_K8S_IMAGE", "img:1")
    monkeypatch.setenv("NEWT_K8S_STORE_CLAIM", "pvc")
    k8s = launcher_from_env()
    assert isinstance(k8s, K8sLauncher) and k8s.image == "img:1" and k8s.store_claim == "pvc"


def test_trained_asset_runs_through_the_launcher_resource(tiny_recipe_file, tmp_path: Path) -> None:
    """A recording launcher stands in for the pod: the asset hands it the recipe and the accelerate command."""
    import json

    import dagster as dg

    from definitions import build_definitions
    from resources import NewtStore, TrainingLauncher

    seen = []

    class Recording(TrainingLauncher):
        def launch(self, context, recipe, cmd, env) -> None:
            seen.append((recipe.name, cmd))
            out = Path(cmd[cmd.index("--output") + 1])
            (out / "metrics.json").write_text(json.dumps({"world_size": 1, "method": "sft"}))

    defs = build_definitions(tiny_recipe_file().parent, NewtStore(root=str(tmp_path / "store")))
    selection = [a for a in defs.assets if a.key.path[-1] in ("dataset", "prepared", "trained")]
    result = dg.materialize(selection, resources={**defs.resources, "launcher": Recording()},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [(name, cmd)] = seen
    assert name == "tiny" and "accelerate.commands.launch" in cmd and "newt.train.sft" in cmd
