"""Recipe → asset group. Each asset computes its key, returns at once on a hit, and otherwise calls one core
function (`newt.pipeline.run_stage`). Training runs as a child process through Dagster Pipes.
"""



from typing import Any

import dagster as dg

from newt.config import Recipe
from newt.pipeline import STAGE_DEFS, StageOutcome, asset_code_version, nodes, run_stage, stage_of, upstream_of
from .presentation import asset_metadata, recipe_link, recipe_reference
from .sources import source_asset_keys

if __package__.startswith("newt_dagster."):  # installed from the wheel: one package, shadowing nothing
    from ..resources.launcher import TrainingLauncher
    from ..resources.runs import record_run_processes
    from ..resources.store import NewtStore
else:  # a checkout: top-level packages beside newt/
    from resources.launcher import TrainingLauncher
    from resources.runs import record_run_processes
    from resources.store import NewtStore

# Stages that hold an accelerator while they run: Dagster's `gpu` pool lets one of them run at a time
# (limit set in dagster.yaml).
GPU_STAGES = ("trained", "merged", "quantized", "evaluation")
# Stages that load the base model or tokenizer with the recipe's trust_remote_code.
REMOTE_CODE_STAGES = ("prepared", "trained", "merged", "evaluation")
# One blocking check per gate kind (newt.evaluate.gates), so the UI says which kind failed.
GATE_CHECKS = {
    "threshold": ("eval_thresholds", "eval.thresholds: absolute limits on the fine-tuned variants"),
    "regression": ("eval_regression", "eval.max_drop: no regression against eval.baseline (default: the previous "
                                      "materialization whose gates passed)"),
    "retention": ("eval_retention", "eval.min_retention: each quantized variant keeps this share of merged's metric"),
}


def stage_asset_key(recipe_name: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([recipe_name, stage])


def recipe_assets(recipe: Recipe) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """One asset per node: the six stages plus `quantized_<method>` for each further quantize output."""
    from .sources import source_assets

    return [*source_assets(recipe), *(_stage_asset(recipe, node) for node in nodes(recipe))]


def _stage_asset(recipe: Recipe, stage: str) -> dg.AssetsDefinition:
    sdef = STAGE_DEFS[stage_of(stage)]
    key = stage_asset_key(recipe.name, stage)
    checks = []
    if stage == "evaluation":  # only the gate kinds the recipe sets: an unconfigured gate is no check, not a pass
        checks = [dg.AssetCheckSpec(GATE_CHECKS[kind][0], asset=key, blocking=True, description=GATE_CHECKS[kind][1])
                  for kind in configured_gates(recipe)]
    description = sdef.description
    if stage_of(stage) == "quantized":
        description = f"{description} Method: {recipe.quantize.variants()[stage]}."

    @dg.asset(
        key=key,
        deps=[stage_asset_key(recipe.name, u) for u in upstream_of(recipe, stage)]
        + (source_asset_keys(recipe) if stage == "dataset" else []),  # external data: assets/sources.py
        group_name=recipe.name,
        description=f"{description} {recipe_link(recipe)}",
        metadata=recipe_reference(recipe),
        code_version=asset_code_version(recipe, stage),
        kinds=stage_kinds(stage_of(stage)),
        pool="gpu" if stage_of(stage) in GPU_STAGES else None,
        check_specs=checks or None,
        tags={"newt/stage": stage_of(stage)},
    )
    def _asset(context: dg.AssetExecutionContext, store: NewtStore, launcher: TrainingLauncher):
        record_run_processes(context)  # so that a later `newt run` can tell this run died (resources/runs.py)
        launch = None
        if stage == "trained":
            def launch(cmd: list[str], env: dict[str, str]) -> None:
                launcher.launch(context, recipe, cmd, env)

        outcome = run_stage(recipe, stage, store.open(), launcher=launch, log=context.log.info)
        metadata, check_results = stage_result(recipe, stage, outcome, context.instance)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.key), metadata=metadata, check_results=check_results
        )

    return _asset


def stage_result(recipe: Recipe, stage: str, outcome: StageOutcome,
                 instance: dg.DagsterInstance) -> tuple[dict[str, Any], list[dg.AssetCheckResult] | None]:
    """What a stage's materialization records: its metadata and, for `evaluation`, the gates' check results.
    The asset body and `newt run`'s all-hits path (jobs/cli.py) both record exactly this."""
    metadata, check_results = asset_metadata(outcome), None
    if recipe.trust_remote_code and stage in REMOTE_CODE_STAGES:  # never silent: the model repo's code ran
        metadata["trust_remote_code"] = True
    if stage == "evaluation":
        previous = _previous_metrics(instance, stage_asset_key(recipe.name, stage))
        check_results = _gate_results(recipe, outcome, previous)
        metadata["gates_passed"] = all(r.passed for r in check_results)
    return metadata, check_results


# --- issue 17: how assets read in the UI (kinds with icons, only configured gates; links: assets/presentation.py)


def stage_kinds(stage: str) -> set[str]:
    """Dagster's known kinds draw an icon: `huggingface` for stages on HF datasets/tokenizers, `pytorch` for
    stages that run a model."""
    return {"newt", "huggingface"} | ({"pytorch"} if stage in GPU_STAGES else set())


def configured_gates(recipe: Recipe) -> list[str]:
    """The gate kinds (GATE_CHECKS keys) that the recipe sets."""
    cfg = recipe.eval
    return [kind for kind, on in (("threshold", cfg.thresholds), ("regression", cfg.max_drop),
                                  ("retention", cfg.min_retention)) if on]


def _previous_metrics(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = 50) -> dict | None:
    """Metrics of the latest earlier materialization whose gates passed (a failed one was still recorded, and
    must not become the bar the next run is held to); None when there is none."""
    from newt.evaluate import unflatten

    for record in instance.fetch_materializations(key, limit=limit).records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        meta = {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
        if meta.get("cache") == "hit":  # re-reports an earlier artifact, its numbers as text (assets/presentation.py)
            continue
        if meta.get("gates_passed", True) is True:
            return unflatten({k: v for k, v in meta.items() if "/" in k})
    return None


def _gate_results(recipe: Recipe, outcome: StageOutcome, previous: dict | None) -> list[dg.AssetCheckResult]:
    from newt.evaluate import gates

    results = outcome.metadata.get("results", {})
    out = []
    for kind, verdicts in gates(results, recipe, previous).items():
        if kind not in configured_gates(recipe):
            continue
        name = GATE_CHECKS[kind][0]
        if verdicts:
            text = "\n".join(f"- {'✅' if v['passed'] else '❌'} {v['text']}" for v in verdicts)
        elif kind == "regression" and recipe.eval.max_drop and recipe.eval.baseline == "previous":
            text = "no earlier materialization with passing gates to compare with"
        else:
            text = "no verdicts: none of the gate's metrics were evaluated"
        meta: dict[str, Any] = {"verdicts": dg.MetadataValue.md(text)}
        if verdicts:
            meta["details"] = dg.MetadataValue.json(verdicts)
        out.append(dg.AssetCheckResult(check_name=name, passed=all(v["passed"] for v in verdicts), metadata=meta))
    return out
