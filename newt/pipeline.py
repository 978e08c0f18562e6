"""The stage graph of a recipe, each stage's cache key, and the one function that materializes a stage.

Keys chain: a stage's key hashes its code version, its recipe fields (schema tags), its upstream stages' keys and
digests of its external inputs (data versions, tokenizer and model files, template text). All keys of a recipe can
therefore be computed before anything runs (`plan`), which is what `newt plan`, the Dagster assets and the tests use.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from newt import STAGES
from newt.cache import Store, compute_key
from newt.codeversion import CodeVersion, code_version
from newt.config import Recipe, stage_fields
from newt.stage import Launcher, Log, StageRun


@dataclass(frozen=True)
class StageDef:
    name: str
    upstream: tuple[str, ...]
    entry: str  # the module whose `build(StageRun)` materializes the stage; its imports are the code version
    description: str


STAGE_DEFS: dict[str, StageDef] = {
    s.name: s
    for s in (
        StageDef("dataset", (), "newt.data", "Raw rows fetched from each source, with content versions."),
        StageDef("prepared", ("dataset",), "newt.prepare",
                 "Chat-templated, tokenized rows with loss masks, split into train and held-out."),
        StageDef("trained", ("prepared",), "newt.train", "SFT (full, LoRA, QLoRA), DPO, KTO or GRPO run under accelerate."),
        StageDef("merged", ("trained",), "newt.merge", "Adapter merged into safetensors weights + tokenizer."),
        StageDef("quantized", ("merged",), "newt.quantize", "Quantized/exported model that reloads."),
        StageDef("evaluation", ("prepared", "merged", "quantized"), "newt.evaluate",
                 "Held-out metrics of each model variant, per training method (loss and answers for SFT, "
                 "preference accuracy for DPO/KTO, reward for GRPO); gates are asset checks."),
    )
}
assert tuple(STAGE_DEFS) == STAGES


@dataclass
class KeyInfo:
    stage: str  # the stage (store folder); a node `quantized_<method>` is a further output of `quantized`
    key: str
    inputs: dict[str, Any]


# --- nodes: the six stages plus one node per further quantize output ----------------------------------------


def stage_of(node: str) -> str:
    """The stage a graph node belongs to: `quantized_<method>` is a further output of the `quantized` stage."""
    return "quantized" if node.startswith("quantized_") else node


def nodes(recipe: Recipe) -> tuple[str, ...]:
    """Every node (= asset name) of a recipe's graph, in build order: the six stages, with one node per further
    `quantize.outputs` entry right after `quantized` (the first output)."""
    i = STAGES.index("quantized") + 1
    extra = tuple(v for v in recipe.quantize.variants() if v != "quantized")
    return STAGES[:i] + extra + STAGES[i:]


def upstream_of(recipe: Recipe, node: str) -> tuple[str, ...]:
    """Evaluation depends on the quantized outputs it evaluates (and always on prepared and merged)."""
    if node == "evaluation":
        return ("prepared", "merged", *(v for v in recipe.quantize.variants() if v in recipe.eval.models))
    return STAGE_DEFS[stage_of(node)].upstream


def node_fields(recipe: Recipe, node: str) -> dict[str, Any]:
    """A node's recipe fields: its stage's tagged fields; a quantize output is keyed by its own method only, so
    adding or reordering outputs never rebuilds the others."""
    fields = stage_fields(recipe, stage_of(node))
    if stage_of(node) == "quantized":
        quantize = {k: v for k, v in fields.get("quantize", {}).items() if k != "outputs"}
        fields = {**fields, "quantize": {**quantize, "method": recipe.quantize.variants()[node]}}
    return fields


def external_inputs(recipe: Recipe, stage: str) -> dict[str, Any]:
    """Content digests of what a stage reads from outside the store."""
    from newt import models, templates

    if stage == "dataset":
        from newt.sources import identity, source_version

        # Content versions: where the bytes live (an absolute path, a bucket) is not what they are.
        versions = [source_version(spec, key_path=f"datasets[{i}]") for i, spec in enumerate(recipe.datasets)]
        return {"sources": [identity(v) for v in versions]}
    if stage == "prepared":
        tok = recipe.tokenizer_config or recipe.base_model
        text = templates.explicit_template(recipe)
        out = {
            "tokenizer_files": models.tokenizer_digest(tok),
            "chat_template_sha256": hashlib.sha256(text.encode()).hexdigest() if text is not None else None,
        }
        if recipe.processor_type:  # images named by path: their bytes, not their names, key the prepared rows
            from newt.masking.multimodal import local_image_digests
            from newt.prepare import image_base

            out["image_files"] = [local_image_digests(s.path, image_base(s.path)) for s in recipe.datasets]
        return out
    if stage == "trained":
        return {"base_model_files": models.weights_digest(recipe.base_model)}
    if stage == "evaluation" and recipe.eval.lm_eval_include_path:
        from newt.digest import dir_digest

        return {"lm_eval_task_files": dir_digest(recipe.eval.lm_eval_include_path)}
    return {}


def entry_points(recipe: Recipe, stage: str) -> list[str]:
    """The modules that run a stage: its builder's, and for `trained` the training child the builder launches
    (`newt.train.<method>`, a separate process, so no import of the builder leads to it)."""
    points = [STAGE_DEFS[stage].entry]
    if stage == "trained":
        from newt.train import module_of

        points.append(module_of(recipe))
    return points


def stage_code(recipe: Recipe, stage: str) -> CodeVersion:
    """A stage's code version, derived from its entry points (newt.codeversion)."""
    return code_version(entry_points(recipe, stage))


def plan(recipe: Recipe, stages: tuple[str, ...] | None = None) -> dict[str, KeyInfo]:
    """Keys of the requested nodes (default: all, `nodes(recipe)`) and, necessarily, of everything upstream."""
    out: dict[str, KeyInfo] = {}
    stages = nodes(recipe) if stages is None else stages

    def visit(node: str) -> KeyInfo:
        if node not in out:
            stage = stage_of(node)
            code = stage_code(recipe, stage)
            inputs = {
                "stage": stage,
                "code_version": code.version,
                "code": {"modules": code.modules, "libraries": code.libraries},  # what `newt plan` names
                "fields": node_fields(recipe, node),
                "upstream": {u: visit(u).key for u in upstream_of(recipe, node)},
                "external": external_inputs(recipe, stage),
            }
            out[node] = KeyInfo(stage, compute_key(inputs), inputs)
        return out[node]

    for s in stages:
        visit(s)
    return out


def asset_code_version(recipe: Recipe, stage: str) -> str:
    """What Dagster shows as the asset's code version: the stage's code plus its recipe fields."""
    code = stage_code(recipe, stage_of(stage)).version
    return compute_key({"code": code, "fields": node_fields(recipe, stage)})[:16]


# --- running a stage -----------------------------------------------------------------------------------------

@dataclass
class StageOutcome:
    stage: str
    key: str
    uri: str
    cache: str  # "hit" | "miss"
    metadata: dict[str, Any]
    inputs: dict[str, Any]


def builders() -> dict[str, Callable[[StageRun], dict[str, Any]]]:
    """Each stage's `build`, from its entry module: the code that runs is the code its key hashes."""
    return {name: importlib.import_module(sdef.entry).build for name, sdef in STAGE_DEFS.items()}


def run_stage(
    recipe: Recipe,
    stage: str,
    store: Store,
    *,
    launcher: Launcher | None = None,
    log: Log = print,
    keys: dict[str, KeyInfo] | None = None,
) -> StageOutcome:
    """Return the committed artifact for `stage` (a node: a stage or `quantized_<method>`) under the recipe's
    current key, building it on a miss."""
    keys = keys or plan(recipe, (stage,))
    info = keys[stage]
    node, stage = stage, info.stage
    found = store.lookup(stage, info.key)
    if found.status == "corrupt":
        log(f"{node}: artifact {found.uri} is corrupt ({found.reason}); rebuilding it")
    if not found.hit:
        with store.lock(stage, info.key):
            found = store.lookup(stage, info.key)  # another process may have built it while we waited
            if not found.hit:
                upstream = {u: store.local_path(keys[u].stage, keys[u].key) for u in upstream_of(recipe, node)}
                run = StageRun(recipe, stage, info.key, store.workdir(stage, info.key), upstream, launcher, log,
                               extra={"node": node})
                with store.reading([(keys[u].stage, keys[u].key) for u in upstream_of(recipe, node)]):  # newt gc
                    metadata = builders()[stage](run)
                # The recipe's name goes into the manifest's metadata, never the key (a key must not depend on
                # a file name): `newt plan` finds a recipe's previous artifact by it to say what changed.
                meta = {**metadata, "recipe": recipe.name}
                found = store.commit(stage, info.key, run.workdir, info.inputs, meta)
                return StageOutcome(stage, info.key, found.uri, "miss", metadata, info.inputs)
    return _hit(info, found)


def _hit(info: KeyInfo, found: Any) -> StageOutcome:
    assert found.manifest is not None
    metadata = {k: v for k, v in found.manifest.get("metadata", {}).items() if k != "recipe"}  # as on a miss
    return StageOutcome(info.stage, info.key, found.uri, "hit", metadata, info.inputs)


def committed_outcomes(recipe: Recipe, nodes_: list[str], store: Store,
                       keys: dict[str, KeyInfo] | None = None) -> dict[str, StageOutcome] | None:
    """Each node's outcome when every one of them is committed under its current key (what `run_stage` returns
    for them, building nothing); None as soon as one must be built."""
    keys = keys or plan(recipe, tuple(nodes_))
    out = {}
    for node in nodes_:
        found = store.lookup(keys[node].stage, keys[node].key)
        if not found.hit:
            return None
        out[node] = _hit(keys[node], found)
    return out


def missing_stages(recipe: Recipe, store: Store, keys: dict[str, KeyInfo] | None = None) -> list[str]:
    """Stages with no committed artifact under their current key: what a scheduled run must build.

    Keys chain, so a changed stage makes every downstream stage missing too; a stage that is a hit stays out.
    """
    keys = keys or plan(recipe)
    return [s for s in nodes(recipe) if not store.lookup(keys[s].stage, keys[s].key).hit]
