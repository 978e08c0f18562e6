"""Checks of the Axolotl-derived recipe keys that need more than one field or a library's list of names.

`cross_field_problems` is called by `Recipe._cross_field`, which reports its problems together with the schema's
own cross-field rules.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from newt.spelling import close_match

# Axolotl plugins newt applies (by class name, whatever module path the config spells) → what they switch on.
PLUGINS = {"LigerPlugin": "Liger kernels (liger_* keys)", "CutCrossEntropyPlugin": "cut_cross_entropy"}


@lru_cache(maxsize=None)
def enum_values(module: str, name: str) -> tuple[str, ...]:
    """The string values of a transformers enum (`OptimizerNames`, `SchedulerType`). Read from the module's source
    (plain string enums) so that `newt validate` does not pay for importing transformers and torch; imported when
    the source cannot be read."""
    # find_spec of a submodule would import its package (transformers' __init__); find the package's folder only
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    names: list[str] = []
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    source = Path(folders[0], *rest.split(".")).with_suffix(".py") if folders and rest else None
    if source is not None and source.is_file():
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                names = [
                    stmt.value.value for stmt in node.body
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ]
    if not names:
        from importlib import import_module

        names = [o.value for o in getattr(import_module(module), name)]
    return tuple(names)


def optimizer_names() -> tuple[str, ...]:
    return enum_values("transformers.training_args", "OptimizerNames")


def check_scheduler(value: str) -> str:
    names = enum_values("transformers.trainer_utils", "SchedulerType")
    if value in names:
        return value
    hint = close_match(value, names)
    raise ValueError(f"not a learning-rate schedule transformers knows; choose one of: {', '.join(names)}"
                     + (f" (did you mean {hint!r}?)" if hint else ""))


def check_optimizer(value: str) -> str:
    names = optimizer_names()
    if value in names:
        return value
    hint = close_match(value, names)
    raise ValueError(f"not an optimizer transformers knows; choose one of: {', '.join(names)}"
                     + (f" (did you mean {hint!r}?)" if hint else ""))


def plugin_kind(name: str) -> str | None:
    return name.rsplit(".", 1)[-1] if name.rsplit(".", 1)[-1] in PLUGINS else None


def cross_field_problems(recipe: Any) -> list[str]:
    """`recipe` is a validated newt.config.Recipe (not imported here: the schema calls this module)."""
    problems: list[str] = []
    given = recipe.model_fields_set
    if recipe.warmup_ratio is not None and recipe.warmup_steps:
        problems.append("warmup_ratio and warmup_steps are both set; keep one of them")
    if recipe.saves_per_epoch is not None and "save_steps" in given:
        problems.append("saves_per_epoch and save_steps are both set; keep one of them")
    if recipe.evals_per_epoch is not None and recipe.eval_steps is not None:
        problems.append("evals_per_epoch and eval_steps are both set; keep one of them")
    if recipe.load_in_8bit and recipe.adapter != "lora":
        problems.append(f"load_in_8bit: true needs adapter: lora (8-bit LoRA), but adapter is {recipe.adapter!r}; "
                        "use adapter: lora, or remove load_in_8bit (qlora is already 4-bit)")
    if recipe.deepspeed and recipe.fsdp:
        problems.append("deepspeed and fsdp are both set; keep one of them")
    if (recipe.deepspeed or recipe.fsdp or recipe.fsdp_config) and recipe.accelerate_config:
        problems.append("accelerate_config is set together with deepspeed/fsdp, which make the accelerate config; "
                        "keep one of them")
    for i, name in enumerate(recipe.plugins):
        if plugin_kind(name) is None:
            problems.append(f"plugins[{i}]: {name!r} is not an Axolotl plugin newt applies; newt applies "
                            f"{', '.join(PLUGINS)} (by class name); remove it")
    if recipe.group_by_length and recipe.rl:
        problems.append(f"group_by_length needs tokenized supervised rows, but rl: {recipe.rl} rows are text; "
                        "remove group_by_length")
    if recipe.resize_token_embeddings_to_32x and recipe.adapter and (
            recipe.tokens or recipe.eot_tokens or recipe.special_tokens.additional_special_tokens):
        problems.append("resize_token_embeddings_to_32x with new tokens and a LoRA adapter is not supported (the "
                        "merged model would not match the adapter's embedding); remove one of them")
    if recipe.rl not in ("orpo",) and recipe.orpo_alpha is not None:
        problems.append(f"orpo_alpha is set but rl is {recipe.rl!r}; set rl: orpo or remove orpo_alpha")
    if recipe.rl not in ("cpo", "simpo") and (recipe.cpo_alpha is not None or recipe.simpo_gamma is not None):
        problems.append(f"cpo_alpha/simpo_gamma are set but rl is {recipe.rl!r}; set rl: cpo or simpo, or remove them")
    return problems
