"""A markdown view of the masks, for the `prepared` asset's metadata in the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from newt.masking.boundaries import text_tokenizer
from newt.masking.scanner import IGNORE_INDEX

# Trained text is bold, masked text struck through: Dagster's UI renders metadata markdown in a monospace font
# with no style for code spans and drops raw HTML, so GFM strikethrough is what marks masked text beyond weight.
# A short legend, so it fits the metadata column.
LEGEND = "**trained** · ~~`masked`~~ · ⏎ newline"
_MD_SPECIAL = str.maketrans(
    {c: "\\" + c for c in "\\`*_{}[]()#+-.!|~"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def _segments(ids: Sequence[int], labels: Sequence[int]) -> list[tuple[bool, list[int]]]:
    out: list[tuple[bool, list[int]]] = []
    for t, lab in zip(ids, labels):
        trained = lab != IGNORE_INDEX
        if out and out[-1][0] == trained:
            out[-1][1].append(t)
        else:
            out.append((trained, [t]))
    return out


def _render(text: str, trained: bool) -> str:
    """One segment as markdown. Trained text is **bold** and masked text ~~`struck-through code`~~; a newline is ⏎
    plus a hard line break, styled like the newline token (bold when trained, struck code when masked). CommonMark only opens `**` before a non-space and closes it after one, and older renderers (Dagster's
    UI) do not close it between punctuation and ⏎, so a trained line's surrounding spaces stay outside the
    emphasis and its ⏎ goes inside."""
    lines = text.split("\n")
    parts = []
    for i, line in enumerate(lines):
        nl = "⏎" if i < len(lines) - 1 else ""
        body = line.strip()
        if trained and (body or nl):
            lead = line[: len(line) - len(line.lstrip())]
            trail = line[len(line.rstrip()) :] if body else ""
            if nl:
                parts.append(f"{lead}**{body.translate(_MD_SPECIAL)}{trail}{nl}**")
            else:
                parts.append(f"{lead}**{body.translate(_MD_SPECIAL)}**{trail}")
        elif body or nl:  # a masked newline is code too, so ⏎ never sits right after a closing `**`
            # struck through around the code span: backticks on both sides keep `~~` flanking in every renderer
            parts.append(f"~~`{line.replace('`', 'ˋ')}{nl}`~~")
        else:
            parts.append("·" * len(line))  # keep visible spacing of a blank masked line
        if nl:
            parts.append("  \n")  # two spaces: a markdown hard line break
    return "".join(parts)


def mask_preview_markdown(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    tokenizer: Any,
    rows: int = 3,
    max_tokens: int = 512,
) -> str:
    """The first `rows` rows with supervised and masked text told apart at a glance."""
    tok = text_tokenizer(tokenizer)
    blocks = [LEGEND]
    for r in range(min(rows, len(input_ids))):
        ids, labs = list(input_ids[r])[:max_tokens], list(labels[r])[:max_tokens]
        n_sup = sum(1 for x in labels[r] if x != IGNORE_INDEX)
        head = f"#### Row {r}: {len(input_ids[r])} tokens, {n_sup} supervised"
        if len(input_ids[r]) > max_tokens:
            head += f" (first {max_tokens} shown)"
        body = "".join(_render(tok.decode(seg), trained) for trained, seg in _segments(ids, labs))
        blocks.append(f"{head}\n\n{body}")
    return "\n\n".join(blocks)


def audit_markdown(report: dict) -> str:
    """The audit as markdown: supervised tokens per role, zero-supervision rows, failures."""
    total = sum(report["supervised_tokens_per_role"].values()) or 1
    lines = ["| role | supervised tokens | share |", "|---|---:|---:|"]
    for role, n in sorted(report["supervised_tokens_per_role"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {role} | {n:,} | {n / total:.1%} |")
    lines.append("")
    lines.append(
        f"Audit of a sample ({report.get('sample') or str(report['sampled_rows']) + ' rows'}): "
        f"{len(report['failures'])} of {report['sampled_rows']} sampled rows fail ({report['failure_rate']:.1%}); "
        f"{report['zero_supervision_rows']} of them have no supervised token; "
        f"{report['dropped_message_count']} messages dropped by the template. The asset has "
        f"{report['rows_total']:,} rows."
    )
    for f in report["failures"][:3]:
        lines += ["", f"Row {f['row']}:", "```", f["diff"], "```"]
    return "\n".join(lines)
