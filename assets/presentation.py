"""How a stage's outcome reads in the Dagster UI: metadata values built from what the core returned.

- `trained`: the training curve as pictures (a sparkline inline, the full matplotlib chart one click away, both
  embedded as `data:` PNGs) and the logged rows as a typed table;
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
    from newt.train import curve_history

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
            meta.update(history_metadata(value, outcome.uri, curve_history(outcome.metadata)))
        elif name == "loss_curve_rows":  # drawn in the pictures above, not listed
            continue
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


# Dagster's UI renders a markdown metadata value in the metadata table only when it is shorter than this many
# characters, and behind a "[Show Markdown]" dialog otherwise (dagster-webserver 1.13.28, ui-core
# src/metadata/MetadataEntry.tsx: `expandSmallValues && entry.mdStr.length < 1000`). Its markdown renderer keeps
# `data:` image sources (ui-core src/ui/MarkdownWithPlugins.tsx adds `data` to rehype-sanitize's `src` protocols).
INLINE_MARKDOWN_CHARS = 1000


def history_metadata(history: list[dict[str, Any]], artifact: str, curve: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """`loss_curve` (a sparkline of the whole run with its first and last loss, small enough to show inline),
    `loss_chart` (the full matplotlib chart: loss, eval loss, learning rate, with axes; one click away),
    `loss_curve_png` (the same chart's file in the artifact) and `loss_history` (the last logged rows, typed).
    `curve` is the whole run's rows (`loss_curve_rows`); without it the pictures draw `history`."""
    import base64

    from newt.plots import loss_png, loss_sparkline_png, points
    from newt.train import LOSS_PNG

    out: dict[str, Any] = {"loss_history": rows_table(history)}
    curve = curve if curve is not None else history
    chart = loss_png(curve, title="training loss")
    if chart is None:
        return out
    losses = points(curve, "loss")
    # short paragraphs: the UI's value column is about 45 monospace characters wide and does not wrap them
    summary = f"train loss {losses[0][1]:.4g} → {losses[-1][1]:.4g} · steps {losses[0][0]:g}–{losses[-1][0]:g}"
    if points(curve, "eval_loss"):
        summary += "\n\neval loss: orange"
    summary += "\n\nfull chart: loss_chart"
    head = "![loss over steps](data:image/png;base64,"
    tail = ")\n\n" + summary
    budget = (INLINE_MARKDOWN_CHARS - 1 - len(head) - len(tail)) * 3 // 4  # base64: 4 characters per 3 bytes
    spark = loss_sparkline_png(curve, max_bytes=budget)
    out["loss_curve"] = dg.MetadataValue.md(f"{head}{base64.b64encode(spark).decode()}{tail}" if spark else summary)
    alt = "train loss, eval loss and learning rate over steps"
    out["loss_chart"] = dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(chart).decode()})")
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
