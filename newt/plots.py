"""The training curve as a picture: loss (and eval loss, learning rate) over steps, a PNG made with matplotlib.

Core code (no Dagster): the asset layer embeds the bytes in the `trained` asset's metadata, and anything else
(a report, a notebook) can call it the same way.
"""

from __future__ import annotations

import io
from typing import Any

# the curves drawn, when the history has them: (column, label, axis); learning rate gets its own right-hand axis
CURVES = (("loss", "train loss", "left"), ("eval_loss", "eval loss", "left"), ("learning_rate", "learning rate", "right"))


def loss_png(history: list[dict[str, Any]], title: str = "training") -> bytes | None:
    """PNG bytes of the curves over `step`; None when the history has no loss point to draw."""
    if not any(isinstance(row.get("loss"), (int, float)) for row in history):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.add_subplot()
    right = None
    lines = []
    for column, label, side in CURVES:
        points = [(row["step"], row[column]) for row in history if isinstance(row.get(column), (int, float))
                  and isinstance(row.get("step"), (int, float))]
        if not points:
            continue
        axis = ax
        if side == "right":
            right = right or ax.twinx()
            axis = right
        steps, values = zip(*points)
        color = {"loss": "tab:blue", "eval_loss": "tab:orange", "learning_rate": "tab:gray"}[column]
        lines += axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, color=color,
                           label=label, linestyle="--" if side == "right" else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if right is not None:
        right.set_ylabel("learning rate")
        right.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_text_chart(history: list[dict[str, Any]], width: int = 60, height: int = 12) -> str | None:
    """The loss (● train, ○ eval) over steps as a text chart: what the Dagster UI can show inline, since its
    markdown renderer (1.13) drops `data:` images and raw HTML; None when there is no loss point."""
    series = {mark: [(row["step"], row[col]) for row in history if isinstance(row.get(col), (int, float))
                     and isinstance(row.get("step"), (int, float))]
              for mark, col in (("●", "loss"), ("○", "eval_loss"))}
    points = [p for pts in series.values() for p in pts]
    if not series["●"]:
        return None
    (x0, x1), (y0, y1) = [(min(v), max(v)) for v in zip(*points)]
    grid = [[" "] * width for _ in range(height)]
    for mark, pts in series.items():
        for x, y in pts:
            col = round((x - x0) / (x1 - x0) * (width - 1)) if x1 > x0 else 0
            row = round((y1 - y) / (y1 - y0) * (height - 1)) if y1 > y0 else height // 2
            grid[row][col] = mark
    label = max(len(f"{y1:.4g}"), len(f"{y0:.4g}"))
    lines = [f"{(f'{y1:.4g}' if r == 0 else f'{y0:.4g}' if r == height - 1 else ''):>{label}} │{''.join(g)}"
             for r, g in enumerate(grid)]
    lines.append(" " * label + " └" + "─" * width)
    left, right = f"step {x0:g}", f"{x1:g}"
    lines.append(" " * (label + 2) + left + right.rjust(width - len(left)))
    legend = "● train loss" + (" · ○ eval loss" if series["○"] else "")
    return "\n".join([legend, *lines])
