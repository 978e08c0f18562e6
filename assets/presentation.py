"""How a stage's outcome reads in the Dagster UI: metadata values built from what the core returned.

- `trained`: the training curve as a text chart (inline) and as a PNG in the artifact (linked), and the logged rows
  as a typed table;
- `evaluation`: the results as a typed table (one row per model variant) next to the markdown one, and one numeric
  entry per `<variant>/<metric>`, which the UI plots across materializations;
- a cache hit reports the same numbers as text, not as numbers: it re-reports an existing artifact, and a number
  would add an identical point to every plot.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from newt.config import Recipe
from newt.pipeline import StageOutcome

TABLE_TYPES = {bool: "bool", int: "int", float: "float", str: "string"}


def asset_metadata(outcome: StageOutcome) -> dict[str, Any]:
    from newt.evaluate import flat_metrics, results_table

    meta: dict[str, Any] = {
        "cache": outcome.cache,
        "key": outcome.key,
        "artifact": dg.MetadataValue.path(outcome.uri),
        "key_inputs": dg.MetadataValue.json(outcome.inputs),
    }
    plotted: dict[str, Any] = {}
    for name, value in outcome.metadata.items():
        if name == "results":
            meta["results"] = dg.MetadataValue.md(results_table(value))
            meta["results_table"] = results_table_value(value)
            plotted.update(flat_metrics(value))
        elif name == "loss_history" and isinstance(value, list):
            meta.update(history_metadata(value, outcome.uri))
        elif name.endswith("_preview") or name.endswith("_markdown"):
            meta[name] = dg.MetadataValue.md(str(value))
        elif name.endswith("_url") and isinstance(value, str):  # tracker runs (newt/tracking.py)
            meta[name] = dg.MetadataValue.url(value)
        elif name.endswith(("_run_dir", "_logdir")) and isinstance(value, str):
            meta[name] = dg.MetadataValue.path(value)
        elif isinstance(value, (dict, list)):
            meta[name] = dg.MetadataValue.json(value)
        elif value is not None:
            plotted[name] = value
    for name, value in plotted.items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        meta[name] = dg.MetadataValue.text(str(value)) if is_number and outcome.cache == "hit" else value
    return meta


def recipe_link(recipe: Recipe) -> str:
    """A markdown link to the recipe file (asset descriptions render as markdown)."""
    if not recipe.source:
        return f"(recipe {recipe.name})"
    path = Path(recipe.source).resolve()
    return f"(recipe [{path.name}]({path.as_uri()}))"


def recipe_reference(recipe: Recipe) -> dict[str, Any]:
    """The recipe file as the asset's code reference: the UI's "source" link next to the definition."""
    if not recipe.source:
        return {}
    with warnings.catch_warnings():  # code references are a beta API: one warning per asset otherwise
        warnings.simplefilter("ignore", dg.BetaWarning)
        ref = dg.LocalFileCodeReference(file_path=str(Path(recipe.source).resolve()), label="recipe")
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[ref])}


def history_metadata(history: list[dict[str, Any]], artifact: str) -> dict[str, Any]:
    """`loss_curve` (a text chart of the logged steps, shown inline), `loss_curve_png` (the matplotlib picture in
    the artifact) and `loss_history` (the rows, typed).

    Dagster 1.13's markdown renderer drops images whose source is not http(s) — a `data:` URI included — and raw
    HTML, so the PNG cannot be shown inline; the text chart can, in the monospace font the UI renders markdown in."""
    from newt.plots import loss_text_chart
    from newt.train import LOSS_PNG

    out: dict[str, Any] = {"loss_history": rows_table(history)}
    chart = loss_text_chart(history)
    if chart is not None:
        out["loss_curve"] = dg.MetadataValue.md(f"```\n{chart}\n```")
        out["loss_curve_png"] = dg.MetadataValue.path(f"{artifact.rstrip('/')}/{LOSS_PNG}")
    return out


def rows_table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    """A typed table of dict rows: one column per key (in first-seen order), typed by its first non-null value."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    types = {n: next((TABLE_TYPES.get(type(r[n]), "string") for r in rows if r.get(n) is not None), "string")
             for n in names}
    records = [dg.TableRecord({n: _cell(row.get(n), types[n]) for n in names}) for row in rows]
    return dg.MetadataValue.table(records, schema=dg.TableSchema([dg.TableColumn(n, types[n]) for n in names]))


def _cell(value: Any, kind: str) -> Any:
    if value is None or kind != "string":
        return value
    return str(value)


def results_table_value(results: dict[str, dict[str, float]]) -> dg.TableMetadataValue:
    """One row per evaluated variant, one float column per metric (`rows` as an int)."""
    names = list(dict.fromkeys(n for m in results.values() for n in m))
    schema = dg.TableSchema([dg.TableColumn("model", "string"),
                             *(dg.TableColumn(n, "int" if n in ("rows", "pairs") else "float") for n in names)])
    records = [dg.TableRecord({"model": variant, **{n: _number(m.get(n), n) for n in names}})
               for variant, m in results.items()]
    return dg.MetadataValue.table(records, schema=schema)


def _number(value: Any, name: str) -> Any:
    if value is None:
        return None
    return int(value) if name in ("rows", "pairs") else float(value)
