"""Axolotl's `deepspeed` and `fsdp`/`fsdp_config`/`fsdp_version` → the accelerate config file of the training
child (written into the stage's work folder and passed to `accelerate launch --config_file`).

* `deepspeed`: a newt preset name (`deepspeed_zero2`, `deepspeed_zero3`), a DeepSpeed JSON file (passed to accelerate
  as `deepspeed_config_file`), or the name of one of Axolotl's shipped files (`deepspeed_configs/zero3_bf16.json`)
  that is not on this machine: read as newt's preset of the same ZeRO stage.
* `fsdp`: transformers' option words (`full_shard`, `shard_grad_op`, `hybrid_shard`, `no_shard`, `offload`,
  `auto_wrap`); `fsdp_config`: accelerate's `fsdp_*` settings, with or without the `fsdp_` prefix (Axolotl writes
  both); `fsdp_version` (also inside fsdp_config): 1 when not given, as in Axolotl.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from newt.config import Recipe

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
FILE_NAME = "accelerate_config.yaml"

_SHARDING = {"full_shard": "FULL_SHARD", "shard_grad_op": "SHARD_GRAD_OP", "hybrid_shard": "HYBRID_SHARD",
             "no_shard": "NO_SHARD"}


class LaunchConfigError(ValueError):
    pass


def _base(recipe: Recipe, distributed_type: str) -> dict[str, Any]:
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": distributed_type, "num_machines": 1,
            "num_processes": recipe.num_processes, "machine_rank": 0, "use_cpu": False}


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    name = str(recipe.deepspeed)
    if (PRESETS_DIR / f"{name}.yaml").is_file() and name.startswith("deepspeed_"):
        config = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
        config["num_processes"] = recipe.num_processes
        return config
    path = Path(name).expanduser()
    if path.is_file():
        return {**_base(recipe, "DEEPSPEED"), "deepspeed_config": {"deepspeed_config_file": str(path.resolve())}}
    stage = re.search(r"zero(\d)", path.name)
    preset = PRESETS_DIR / f"deepspeed_zero{stage.group(1)}.yaml" if stage else None
    if preset is not None and preset.is_file():
        config = yaml.safe_load(preset.read_text())
        config["num_processes"] = recipe.num_processes
        return config
    shipped = sorted(p.stem for p in PRESETS_DIR.glob("deepspeed_*.yaml"))
    raise LaunchConfigError(f"deepspeed: {name!r} is neither an existing DeepSpeed JSON file nor a newt preset "
                            f"({', '.join(shipped)}); give the path of your JSON file or a preset name")


def fsdp_config(recipe: Recipe) -> dict[str, Any]:
    given = {(k if k.startswith("fsdp_") else f"fsdp_{k}"): v for k, v in recipe.fsdp_config.items()}
    version = recipe.fsdp_version or given.pop("fsdp_version", None) or 1
    given.pop("fsdp_version", None)
    words = recipe.fsdp.split() if isinstance(recipe.fsdp, str) else list(recipe.fsdp or [])
    out: dict[str, Any] = {"fsdp_version": int(version)}
    sharding = next((_SHARDING[w] for w in words if w in _SHARDING), None)
    if sharding:
        if int(version) == 1:
            out["fsdp_sharding_strategy"] = sharding
        else:  # FSDP2 has no strategy names: resharding after forward is what FULL_SHARD does
            out["fsdp_reshard_after_forward"] = sharding == "FULL_SHARD"
    if "offload" in words:
        out["fsdp_offload_params"] = True
    if "auto_wrap" in words or "fsdp_transformer_layer_cls_to_wrap" in given:
        out["fsdp_auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
    out.update(given)
    return {**_base(recipe, "FSDP"), "fsdp_config": out}


def accelerate_config(recipe: Recipe) -> dict[str, Any] | None:
    """The accelerate config the recipe's deepspeed/fsdp keys mean, or None when it sets neither."""
    if recipe.deepspeed:
        return deepspeed_config(recipe)
    if recipe.fsdp or recipe.fsdp_config or recipe.fsdp_version:
        return fsdp_config(recipe)
    return None


def write_config(recipe: Recipe, workdir: Path) -> Path | None:
    config = accelerate_config(recipe)
    if config is None:
        return None
    path = Path(workdir) / FILE_NAME
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
