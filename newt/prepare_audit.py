"""The `prepared` stage's report: the mask audit of a sample of each chat source, the mask preview, and the message
for rows nothing in which is trained."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from newt.config import Recipe
from newt.prepare_rows import ZERO_AS_WRITTEN, masker_for
from newt.prepare_shards import column

AUDIT_ROWS = 1000


def zero_supervision_message(merged, status: np.ndarray, recipe: Recipe) -> str:
    bad = np.flatnonzero(status == ZERO_AS_WRITTEN)
    sources = column(merged, "source")
    first = int(bad[0])
    src = int(sources[first])
    row_in_source = first - int(np.flatnonzero(sources == src)[0])
    example = merged[first]["messages"]
    return (
        f"prepared: {len(bad)} rows have no supervised token as written (before any truncation), first "
        f"datasets[{src}] row {row_in_source}: {example[:300]}. Nothing in them is trained with roles_to_train="
        f"{recipe.roles_to_train}. Fix the rows (e.g. a conversation without an assistant turn), change "
        f"roles_to_train / datasets[{src}].roles, or set allow_zero_supervision_rows: true to drop and count them."
    )


def masking_report(merged, keep: np.ndarray, recipe: Recipe, tokenizer: Any,
                   template: str | None) -> tuple[dict, list[str]]:
    """Audit a sample of each chat source (untruncated kept rows), plus the mask preview of the first rows.

    Returns the report and the audit's problems (each source is held to `mask_audit_max_failure_rate`)."""
    from newt import masking
    from newt.formats import CHAT_TYPES

    sources, truncated = column(merged, "source"), column(merged, "truncated")
    chat = [i for i, s in enumerate(recipe.datasets) if s.type in CHAT_TYPES]
    per_source = AUDIT_ROWS // max(len(chat), 1)
    reports, problems = [], []
    for i in chat:
        idx = keep[(sources[keep] == i) & ~truncated[keep]][:per_source]
        if not len(idx):
            continue
        rows = merged.select(idx)[:]
        convs = [json.loads(m) for m in rows["messages"]]
        masker = masker_for(recipe, recipe.datasets[i], tokenizer, template)
        reports.append(masking.audit(convs, rows["input_ids"], rows["labels"], tokenizer, masker, max_rows=None))
        # zero-supervision rows were handled before the audit (failed, or dropped and counted)
        problems += [f"datasets[{i}] {p}" for p in masking.audit_problems(
            reports[-1], max_failure_rate=recipe.mask_audit_max_failure_rate, allow_zero_supervision=True)]
    preview_rows = merged.select(keep[:3])[:]
    out: dict[str, Any] = {
        "mask_preview": masking.mask_preview_markdown(preview_rows["input_ids"], preview_rows["labels"], tokenizer,
                                                      rows=3),
    }
    if reports:
        out["audit"] = combine_audits(reports, rows_total=len(keep))
        out["audit"]["sample"] = (f"{out['audit']['sampled_rows']} of {len(keep)} kept rows: the first "
                                  f"{per_source:,} untruncated rows of each chat source")
        out["supervised_tokens_per_role"] = out["audit"]["supervised_tokens_per_role"]
    return out, problems


def combine_audits(reports: list[dict], rows_total: int) -> dict:
    checked = sum(r["sampled_rows"] for r in reports)
    failures = [f for r in reports for f in r["failures"]]
    roles: dict[str, int] = {}
    for r in reports:
        for role, n in r["supervised_tokens_per_role"].items():
            roles[role] = roles.get(role, 0) + n
    return {
        "sampled_rows": checked,
        "rows_total": rows_total,
        "failures": failures[:20],
        "failure_count": len(failures),
        "failure_rate": len(failures) / checked if checked else 0.0,
        "zero_supervision_rows": sum(r["zero_supervision_rows"] for r in reports),
        "zero_supervision_examples": [],
        "supervised_tokens_per_role": roles,
        "dropped_message_count": sum(r["dropped_message_count"] for r in reports),
        "dropped_messages": [m for r in reports for m in r["dropped_messages"]][:20],
    }
