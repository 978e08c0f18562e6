"""The mask audit: on the user's own rows, check that what is supervised is what should be.

For a sample of rows, each trainable message's content must equal the decoded supervised tokens of
its turn, up to the template's own documented rewrites: surrounding whitespace is trimmed (Llama 3,
Gemma `| trim`) and `<think>...</think>` blocks are ignored (Qwen3 drops them from earlier turns and
writes an empty one in the last). Each turn's end marker must be supervised exactly as
`train_on_eos` says. Rows without any supervised token are counted over all rows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from newt.masking.boundaries import text_tokenizer
from newt.masking.masker import Masker
from newt.masking.scanner import IGNORE_INDEX, Turn, turns

DEFAULT_MAX_ROWS = 1000
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def normalise(text: str) -> str:
    """Content modulo the template rewrites the audit accepts (see module docstring)."""
    return _THINK.sub("", text).strip()


def message_text(message: dict) -> str | None:
    """A message's text: the string content, or the text parts of multimodal content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def audit(
    conversations: Sequence[list[dict]],
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    tokenizer: Any,
    masker_or_settings: Masker | dict,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    rows_total: int | None = None,
) -> dict:
    """Check the first `max_rows` rows (None: all); JSON-serialisable report, see `audit_problems`.

    `sampled_rows` is how many rows were checked; `rows_total` how many rows the sample was drawn from (the given
    rows unless the caller passes the asset's row count), so a report never reads as covering rows it did not."""
    masker = (
        masker_or_settings
        if isinstance(masker_or_settings, Masker)
        else Masker(tokenizer, **masker_or_settings)
    )
    tok = text_tokenizer(tokenizer)
    n = len(input_ids) if max_rows is None else min(len(input_ids), max_rows)
    zero = [i for i, row in enumerate(labels) if all(t == IGNORE_INDEX for t in row)]
    per_role: Counter = Counter()
    failures: list[dict] = []
    dropped: list[dict] = []
    roles = set(masker.roles_to_train)
    for r in range(n):
        ids, labs, conv = list(input_ids[r]), list(labels[r]), conversations[r]
        row_turns = turns(ids, masker.boundaries)
        covered = 0
        for t in row_turns:
            role = masker.boundaries[t.boundary].role
            n_sup = sum(1 for k in range(t.pos, t.end_stop) if labs[k] != IGNORE_INDEX)
            per_role[role] += n_sup
            covered += n_sup
        per_role["(outside turns)"] += sum(1 for x in labs if x != IGNORE_INDEX) - covered
        full_text = None
        for m_index, m in enumerate(conv):
            text = message_text(m)
            if text and normalise(text):
                full_text = full_text if full_text is not None else tok.decode(ids)
                if normalise(text) not in full_text:
                    dropped.append({"row": r, "message": m_index, "role": m.get("role")})
        if masker.train_on_inputs:
            continue  # every token is supervised: there is no per-turn expectation to check
        problems = _check_row(ids, labs, conv, row_turns, masker, roles, tok)
        if problems:
            failures.append({"row": r, "diff": "\n".join(problems)})
    return {
        "sampled_rows": n,
        "rows_total": len(input_ids) if rows_total is None else rows_total,
        "sample": f"the first {n} of {len(input_ids) if rows_total is None else rows_total} rows",
        "failures": failures,
        "failure_rate": (len(failures) / n) if n else 0.0,
        "zero_supervision_rows": len(zero),
        "zero_supervision_examples": zero[:20],
        "supervised_tokens_per_role": dict(per_role),
        "dropped_messages": dropped[:50],
        "dropped_message_count": len(dropped),
    }


def _check_row(ids, labs, conv, row_turns: list[Turn], masker: Masker, roles: set[str], tok) -> list[str]:
    problems = []
    expected = [(i, m) for i, m in enumerate(conv) if m.get("role") in roles]
    found = [t for t in row_turns if masker.boundaries[t.boundary].role in roles]
    if len(expected) != len(found):
        problems.append(
            f"{len(expected)} trainable messages ({', '.join(sorted(roles))}) but {len(found)} trainable turns "
            "in the tokens: the template dropped or merged messages, or the row was truncated"
        )
    last_found = max((k for k, t in enumerate(found) if t.end_stop > t.end), default=None)
    for k, ((m_index, m), t) in enumerate(zip(expected, found)):
        b = masker.boundaries[t.boundary]
        lo = t.pos if b.include_start else t.content
        got = tok.decode([x for x in labs[lo : t.end] if x != IGNORE_INDEX])
        if t.end_stop == t.end and tok.eos_token and got.rstrip().endswith(tok.eos_token):
            # A turn without an end marker runs to the end of the row; the template's closing EOS
            # is then supervised with it (templates whose turns end where the next one starts).
            got = got.rstrip()[: -len(tok.eos_token)]
        want = message_text(m) or ""
        if normalise(got) != normalise(want):
            problems.append(
                f"message {m_index} ({m.get('role')}): expected {_short(want)!r}\n"
                f"  supervised {_short(got)!r}"
            )
        if t.end_stop > t.end:
            eos = masker.train_on_eos
            want_eos = b.trains_end and (eos in ("turn", "all") or (eos == "last" and k == last_found))
            marker = [labs[j] != IGNORE_INDEX for j in range(t.end, t.end_stop)]
            if any(marker) != want_eos:
                problems.append(
                    f"message {m_index} ({m.get('role')}): end marker {tok.decode(ids[t.end : t.end_stop])!r} "
                    f"{'not ' if want_eos else ''}supervised, but train_on_eos={eos!r} says it should "
                    f"{'' if want_eos else 'not '}be"
                )
    return problems


def audit_problems(
    report: dict, *, max_failure_rate: float = 0.0, allow_zero_supervision: bool = False
) -> list[str]:
    """Why a prepared dataset must be rejected (empty: it passes)."""
    problems = []
    if report["failure_rate"] > max_failure_rate:
        first = report["failures"][0]
        problems.append(
            f"mask audit: {len(report['failures'])} of {report['sampled_rows']} sampled rows "
            f"({report['failure_rate']:.1%}) supervise something other than their trainable messages "
            f"(allowed: {max_failure_rate:.1%}). First, row {first['row']}:\n{first['diff']}\n"
            "Fix: check the chat template and roles_to_train, or set role_boundaries in the recipe."
        )
    if report["zero_supervision_rows"] and not allow_zero_supervision:
        problems.append(
            f"mask audit: {report['zero_supervision_rows']} rows have no supervised token "
            f"(e.g. rows {report['zero_supervision_examples'][:5]}): they add nothing but cost compute. "
            "Fix: check roles_to_train and max length truncation, or allow zero-supervision rows in the recipe."
        )
    return problems
