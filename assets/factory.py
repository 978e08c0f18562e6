"""Recipe → asset group. Each asset computes its key, returns at once on a hit, and otherwise calls one core
function (`newt.pipeline.run_stage`). Training runs as a child process through Dagster Pipes.
"""



from typing import Any

import dagster as dg

from newt import STAGES
from newt.config import Recipe
from newt.pipeline import STAGE_DEFS, StageOutcome, asset_code_version, run_stage
from resources.store import NewtStore

# Stages that hold an accelerator while they run: Dagster's `gpu` pool lets one of them run at a time
# (limit set in dagster.yaml).
GPU_STAGES = ("trained", "merged", "quantized", "evaluation")
GATE_CHECK = "eval_gates"


def stage_asset_key(recipe_name: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([recipe_name, stage])


def recipe_assets(recipe: Recipe) -> list[dg.AssetsDefinition]:
    return [_stage_asset(recipe, stage) for stage in STAGES]


def _stage_asset(recipe: Recipe, stage: str) -> dg.AssetsDefinition:
    sdef = STAGE_DEFS[stage]
    key = stage_asset_key(recipe.name, stage)
    checks = []
    if stage == "evaluation":
        checks = [dg.AssetCheckSpec(GATE_CHECK, asset=key, blocking=True,
                                    description="eval.thresholds on the fine-tuned models (merged, quantized)")]

    @dg.asset(
        key=key,
        deps=[stage_asset_key(recipe.name, u) for u in sdef.upstream],
        group_name=recipe.name,
        description=f"{sdef.description} (recipe {recipe.source or recipe.name})",
        code_version=asset_code_version(recipe, stage),
        kinds={"newt"},
        pool="gpu" if stage in GPU_STAGES else None,
        check_specs=checks or None,
        tags={"newt/stage": stage},
    )
    def _asset(context: dg.AssetExecutionContext, store: NewtStore, pipes: dg.PipesSubprocessClient):
        launcher = None
        if stage == "trained":
            def launcher(cmd: list[str], env: dict[str, str]) -> None:
                pipes.run(command=cmd, context=context, env=env)

        outcome = run_stage(recipe, stage, store.open(), launcher=launcher, log=context.log.info)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.key),
            metadata=asset_metadata(outcome),
            check_results=_gate_results(recipe, outcome) if stage == "evaluation" else None,
        )

    return _asset


def asset_metadata(outcome: StageOutcome) -> dict[str, Any]:
    from newt.evaluate import flat_metrics, results_table

    meta: dict[str, Any] = {
        "cache": outcome.cache,
        "key": outcome.key,
        "artifact": dg.MetadataValue.path(outcome.uri),
        "key_inputs": dg.MetadataValue.json(outcome.inputs),
    }
    for name, value in outcome.metadata.items():
        if name == "results":
            meta["results"] = dg.MetadataValue.md(results_table(value))
            meta.update(flat_metrics(value))
        elif name.endswith("_preview") or name.endswith("_markdown"):
            meta[name] = dg.MetadataValue.md(str(value))
        elif isinstance(value, (dict, list)):
            meta[name] = dg.MetadataValue.json(value)
        elif value is not None:
            meta[name] = value
    return meta


def _gate_results(recipe: Recipe, outcome: StageOutcome) -> list[dg.AssetCheckResult]:
    from newt.evaluate import gates

    verdicts = gates(outcome.metadata.get("results", {}), recipe.eval.thresholds)
    return [dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=all(v["passed"] for v in verdicts),
        metadata={"verdicts": dg.MetadataValue.md("\n".join(f"- {'✅' if v['passed'] else '❌'} {v['text']}"
                                                            for v in verdicts) or "no thresholds set")},
    )]
