"""The training curve as a picture: loss (and eval loss, learning rate) over steps, PNGs made with matplotlib.

Core code (no Dagster): the training stage writes `loss.png` into its artifact, and the asset layer embeds the same
pictures in the `trained` asset's metadata (assets/presentation.py); anything else (a report, a notebook) can call
them the same way.

A history is a list of rows with `step` and any of `loss`, `eval_loss`, `learning_rate`; train and eval rows may be
separate rows of one list (`curve_rows`).
"""

from __future__ import annotations

import io
from typing import Any

# the curves drawn, when the history has them: (column, label, axis, colour); learning rate gets the right axis
CURVES = (("loss", "train loss", "left", "tab:blue"), ("eval_loss", "eval loss", "left", "tab:orange"),
          ("learning_rate", "learning rate", "right", "tab:gray"))
# the most points per curve kept for the pictures: more than a picture's width in pixels shows nothing more
CURVE_POINTS = 500
# sparkline sizes tried in turn (pixels) until one fits the byte budget: a noisy curve compresses worse
SPARK_SIZES = ((320, 72), (240, 56), (180, 44), (120, 32))


def curve_rows(history: list[dict[str, Any]], eval_history: list[dict[str, Any]],
               limit: int = CURVE_POINTS) -> list[dict[str, Any]]:
    """The rows the pictures need from a whole run (train rows' step/loss/learning_rate, eval rows' step/eval_loss),
    each series thinned to at most `limit` evenly spaced rows, its first and last kept."""
    def thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(rows) <= limit:
            return rows
        picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
        return [rows[i] for i in picks]

    keep = ("step", "loss", "eval_loss", "learning_rate")
    return [{k: row[k] for k in keep if k in row} for row in thin(history) + thin(eval_history)]


def points(history: list[dict[str, Any]], column: str) -> list[tuple[float, float]]:
    return [(row["step"], row[column]) for row in history
            if isinstance(row.get(column), (int, float)) and isinstance(row.get("step"), (int, float))]


def loss_png(history: list[dict[str, Any]], title: str = "training") -> bytes | None:
    """PNG bytes of the curves over `step`, with axes, a legend and the learning rate on its own axis; None when
    the history has no loss point to draw."""
    if not points(history, "loss"):
        return None
    from matplotlib.figure import Figure  # a bare Figure renders with the Agg canvas: no display, no pyplot state

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.add_subplot()
    right = None
    lines = []
    for column, label, side, color in CURVES:
        pts = points(history, column)
        if not pts:
            continue
        axis = ax
        if side == "right":
            right = right or ax.twinx()
            axis = right
        steps, values = zip(*pts)
        lines += axis.plot(steps, values, marker="o" if len(pts) < 30 else None, markersize=3, color=color,
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
    return _png(fig, colors=64)


def loss_sparkline_png(history: list[dict[str, Any]], max_bytes: int) -> bytes | None:
    """The train loss (blue) and eval loss (orange) over steps as a small picture without axes or text, at most
    `max_bytes` long: what fits where only a short text may go (the Dagster UI shows markdown of under 1,000
    characters inline, assets/presentation.py). The largest of SPARK_SIZES that fits; None when none fits or there
    is no loss point."""
    if not points(history, "loss"):
        return None
    from matplotlib.figure import Figure

    for width, height in SPARK_SIZES:
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        ax = fig.add_axes((0.02, 0.06, 0.96, 0.88))
        for column, _, side, color in CURVES:
            pts = points(history, column)
            if side == "left" and pts:
                steps, values = zip(*pts)
                # no antialiasing: three flat colours compress to a few hundred bytes
                ax.plot(steps, values, color=color, linewidth=1.5, antialiased=False,
                        marker="o" if column == "eval_loss" or len(pts) < 3 else None, markersize=2)
        ax.set_axis_off()
        png = _png(fig, colors=3)
        if len(png) <= max_bytes:
            return png
    return None


def _png(fig: Any, colors: int) -> bytes:
    """The figure as a palette PNG of at most `colors` colours (Pillow, matplotlib's own dependency): a tenth of the
    size of matplotlib's RGBA output, the same picture to the eye."""
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png")
    image = Image.open(io.BytesIO(raw.getvalue())).convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
