"""The stage graph of a recipe, each stage's cache key, and the one function that materializes a stage.

Keys chain: a stage's key hashes its code version, its recipe fields (schema tags), its upstream stages' keys and
digests of its external inputs (data versions, tokenizer and model files, template text). All keys of a recipe can
therefore be computed before anything runs (`plan`), which is what `newt plan`, the Dagster assets and the tests use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newt import STAGES
from newt.cache import Store, code_version, compute_key
from newt.config import Recipe, stage_fields


@dataclass(frozen=True)
class StageDef:
    name: str
    upstream: tuple[str, ...]
    modules: tuple[str, ...]  # the code whose source is the stage's code version
    description: str


STAGE_DEFS: dict[str, StageDef] = {
    s.name: s
    for s in (
        StageDef("dataset", (), ("newt.data", "newt.sources"), "Raw rows fetched from each source, with content versions."),
        StageDef("prepared", ("dataset",), ("newt.prepare", "newt.masking", "newt.templates"),
                 "Chat-templated, tokenized rows with loss masks, split into train and held-out."),
        StageDef("trained", ("prepared",), ("newt.train",), "LoRA or full SFT run under accelerate."),
        StageDef("merged", ("trained",), ("newt.merge",), "Adapter merged into safetensors weights + tokenizer."),
        StageDef("quantized", ("merged",), ("newt.quantize", "newt.export", "newt.pipeline"), "Quantized/exported model that reloads."),
        StageDef("evaluation", ("prepared", "merged", "quantized"), ("newt.evaluate",),
                 "Held-out loss and generation exact match for each model variant; gates are asset checks."),
    )
}
assert tuple(STAGE_DEFS) == STAGES


@dataclass
class KeyInfo:
    stage: str
    key: str
    inputs: dict[str, Any]


def external_inputs(recipe: Recipe, stage: str) -> dict[str, Any]:
    """Content digests of what a stage reads from outside the store."""
    from newt import models, templates

    if stage == "dataset":
        from newt.sources import source_version

        # Content versions only: where the bytes live (an absolute path, a bucket) is not what they are.
        versions = [source_version(spec, key_path=f"datasets[{i}]") for i, spec in enumerate(recipe.datasets)]
        return {"sources": [{"kind": v["kind"], "version": v["version"]} for v in versions]}
    if stage == "prepared":
        tok = recipe.tokenizer_config or recipe.base_model
        text = templates.explicit_template(recipe)
        return {
            "tokenizer_files": models.tokenizer_digest(tok),
            "chat_template_sha256": hashlib.sha256(text.encode()).hexdigest() if text is not None else None,
        }
    if stage == "trained":
        return {"base_model_files": models.weights_digest(recipe.base_model)}
    return {}


def plan(recipe: Recipe, stages: tuple[str, ...] = STAGES) -> dict[str, KeyInfo]:
    """Keys of the requested stages (and, necessarily, of everything upstream of them)."""
    out: dict[str, KeyInfo] = {}

    def visit(stage: str) -> KeyInfo:
        if stage not in out:
            sdef = STAGE_DEFS[stage]
            inputs = {
                "stage": stage,
                "code_version": code_version(list(sdef.modules)),
                "fields": stage_fields(recipe, stage),
                "upstream": {u: visit(u).key for u in sdef.upstream},
                "external": external_inputs(recipe, stage),
            }
            out[stage] = KeyInfo(stage, compute_key(inputs), inputs)
        return out[stage]

    for s in stages:
        visit(s)
    return out


def asset_code_version(recipe: Recipe, stage: str) -> str:
    """What Dagster shows as the asset's code version: the stage's code plus its recipe fields."""
    sdef = STAGE_DEFS[stage]
    return compute_key({"code": code_version(list(sdef.modules)), "fields": stage_fields(recipe, stage)})[:16]


# --- running a stage -----------------------------------------------------------------------------------------

Launcher = Callable[[list[str], dict[str, str]], None]
Log = Callable[[str], None]


@dataclass
class StageRun:
    """What a stage builder gets: its recipe, key, work folder, upstream artifact folders and the seams."""

    recipe: Recipe
    stage: str
    key: str
    workdir: Path
    upstream: dict[str, Path]
    launcher: Launcher | None = None
    log: Log = print
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageOutcome:
    stage: str
    key: str
    uri: str
    cache: str  # "hit" | "miss"
    metadata: dict[str, Any]
    inputs: dict[str, Any]


def builders() -> dict[str, Callable[[StageRun], dict[str, Any]]]:
    from newt import data, evaluate, merge, prepare, train

    return {
        "dataset": data.build,
        "prepared": prepare.build,
        "trained": train.build,
        "merged": merge.build,
        "quantized": _build_quantized,
        "evaluation": evaluate.build,
    }


def _build_quantized(run: StageRun) -> dict[str, Any]:
    from newt.merge import model_dir
    from newt.quantize import quantize

    return quantize(model_dir(run.upstream["merged"]), Path(run.workdir) / "model", run.recipe.quantize.method)


def run_stage(
    recipe: Recipe,
    stage: str,
    store: Store,
    *,
    launcher: Launcher | None = None,
    log: Log = print,
    keys: dict[str, KeyInfo] | None = None,
) -> StageOutcome:
    """Return the committed artifact for `stage` under the recipe's current key, building it on a miss."""
    keys = keys or plan(recipe, (stage,))
    info = keys[stage]
    found = store.lookup(stage, info.key)
    if found.status == "corrupt":
        log(f"{stage}: artifact {found.uri} is corrupt ({found.reason}); rebuilding it")
    if not found.hit:
        with store.lock(stage, info.key):
            found = store.lookup(stage, info.key)  # another process may have built it while we waited
            if not found.hit:
                upstream = {u: store.local_path(u, keys[u].key) for u in STAGE_DEFS[stage].upstream}
                run = StageRun(recipe, stage, info.key, store.workdir(stage, info.key), upstream, launcher, log)
                metadata = builders()[stage](run)
                found = store.commit(stage, info.key, run.workdir, info.inputs, metadata)
                return StageOutcome(stage, info.key, found.uri, "miss", metadata, info.inputs)
    assert found.manifest is not None
    return StageOutcome(stage, info.key, found.uri, "hit", found.manifest.get("metadata", {}), info.inputs)
