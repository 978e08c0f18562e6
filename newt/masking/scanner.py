"""The role-boundary scanner: token ids + declared turn markers -> labels.

This module decides loss masking for every path (text and multimodal); everything else in
`newt.masking` only finds the boundaries and checks the result. The scan is sequential by nature
(a start marker inside a turn's content is content, not a new turn), but only the marker matches
matter. `label_flat` (and `scan`, which the audit uses) runs in numpy over a whole batch in Arrow's
list layout; `build_labels` / `build_labels_batch` (Python lists in and out) run one compiled regex
per row over the row as a str, so Python only visits the trained turns.
"""

from __future__ import annotations

import codecs
import difflib
import re
import sys
from array import array, typecodes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np

from newt import IGNORE_INDEX  # noqa: F401 - newt.masking exports it
from newt.config import TrainOnEos  # the schema declares the enumeration once

TRAIN_ON_EOS: tuple[str, ...] = get_args(TrainOnEos)


class MaskingError(ValueError):
    """A masking setting or boundary that cannot be applied; the message says how to fix it."""


@dataclass(frozen=True)
class RoleBoundary:
    """One kind of turn: `start` opens it, the first `end` after the start closes it.

    `start` and `end` are token-id sequences. An empty `end` means the turn runs to the end of
    the row. `include_start` trains the start marker of a trainable turn; `include_end=False`
    never trains the end marker and lets the scan resume *at* it, so it can open the next turn.

    `more_ends`: further end markers; the turn ends at the first of any of them (Llama 3.1 ends an
    assistant turn with `<|eot_id|>`, or `<|eom_id|>` after a built-in tool call).
    `end_is_stop` (with `include_end=False`): the end marker is the next turn's opening marker and
    one of the model's stop tokens (GLM-4 `<|user|>`): the scan still resumes at it, and
    `train_on_eos` trains it as this turn's end, so the model learns to stop.
    """

    role: str
    start: tuple[int, ...]
    end: tuple[int, ...] = ()
    include_start: bool = False
    include_end: bool = True
    more_ends: tuple[tuple[int, ...], ...] = ()
    end_is_stop: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(t) for t in self.start))
        object.__setattr__(self, "end", tuple(int(t) for t in self.end))
        object.__setattr__(self, "more_ends", tuple(tuple(int(t) for t in e) for e in self.more_ends if e))
        if self.more_ends and not self.end:
            raise MaskingError(f"RoleBoundary for role {self.role!r} has more_ends but no end marker")
        if not self.start:
            raise MaskingError(
                f"RoleBoundary for role {self.role!r} has an empty start marker; a turn must be opened "
                "by at least one token. Give the marker text that precedes the role's content."
            )

    @property
    def ends(self) -> tuple[tuple[int, ...], ...]:
        """Every end marker, the primary first (empty: the turn runs to the end of the row)."""
        return ((self.end,) + self.more_ends) if self.end else ()

    @property
    def trains_end(self) -> bool:
        """Whether `train_on_eos` may train this turn's end marker."""
        return self.include_end or self.end_is_stop


def known_roles(boundaries: Iterable[RoleBoundary]) -> tuple[str, ...]:
    """The role names the boundaries declare, in declaration order, without duplicates."""
    return tuple(dict.fromkeys(b.role for b in boundaries))


def check_knobs(
    boundaries: Sequence[RoleBoundary], roles_to_train: Iterable[str], train_on_eos: str,
    train_on_inputs: bool = False,
) -> tuple[str, ...]:
    """Validate the masking knobs against the boundaries; returns `roles_to_train` as a tuple.

    An unknown role is an error, not a no-op: a typo would otherwise mask every token. Without any
    boundaries, `train_on_inputs` needs none (every non-pad, non-media token is trained), so the
    roles are not checked then.
    """
    if isinstance(roles_to_train, str):
        roles_to_train = (roles_to_train,)
    roles = tuple(roles_to_train)
    if train_on_eos not in TRAIN_ON_EOS:
        raise MaskingError(f"train_on_eos is {train_on_eos!r}; expected one of {', '.join(TRAIN_ON_EOS)}.")
    if train_on_inputs and not boundaries:
        return roles
    known = known_roles(boundaries)
    unknown = [r for r in roles if r not in known]
    if unknown:
        hints = []
        for r in unknown:
            close = difflib.get_close_matches(r, known, n=1)
            hints.append(f"{r!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise MaskingError(
            f"roles_to_train names {', '.join(hints)}, which the role boundaries do not declare; "
            f"known roles: {', '.join(known) or 'none'}. Fix roles_to_train, or declare the role in "
            "role_boundaries."
        )
    return roles


def _find(flat: np.ndarray, offsets: np.ndarray, seq: tuple[int, ...], first_hits: dict) -> np.ndarray:
    """Sorted positions where `seq` occurs inside one row of the flat batch.

    Boundaries mostly share their first token (`<|im_start|>`), so its hits are computed once and
    the remaining tokens are checked only there.
    """
    hits = first_hits.get(seq[0])
    if hits is None:
        hits = first_hits[seq[0]] = np.flatnonzero(flat == seq[0])
    p = hits
    if len(seq) > 1:
        p = p[p + len(seq) <= flat.shape[0]]
        for k in range(1, len(seq)):
            p = p[flat[p + k] == seq[k]]
        # Drop matches that run across a row end.
        row = np.searchsorted(offsets, p, side="right") - 1
        p = p[p + len(seq) <= offsets[row + 1]]
    return p


@dataclass(frozen=True)
class Turns:
    """Scanned turns of a flat batch, as parallel arrays in scan order. Start marker is
    [pos, content), content [content, end), end marker [end, end_stop) (empty when not found)."""

    pos: np.ndarray
    boundary: np.ndarray
    content: np.ndarray
    end: np.ndarray
    end_stop: np.ndarray
    found: np.ndarray
    row: np.ndarray


def scan(flat: np.ndarray, offsets: np.ndarray, boundaries: Sequence[RoleBoundary]) -> Turns:
    """Every turn of every row (row r is flat[offsets[r]:offsets[r+1]]), left to right.

    The scan is sequential by definition, but only where a start marker occurs inside an accepted
    turn's content: each candidate start's turn (and so where the scan resumes) is computed for all
    candidates at once, and rows where every candidate is followed by the next one are accepted
    whole. Only the rare rows with a start marker inside content are walked in Python.
    """
    empty = np.empty(0, dtype=np.int64)
    if not boundaries or flat.shape[0] == 0:
        return Turns(empty, empty, empty, empty, empty, np.empty(0, dtype=bool), empty)
    first_hits: dict = {}
    pos_parts, b_parts = [], []
    for bi, b in enumerate(boundaries):
        p = _find(flat, offsets, b.start, first_hits)
        pos_parts.append(p)
        b_parts.append(np.full(p.shape[0], bi, dtype=np.int64))
    pos, bidx = np.concatenate(pos_parts), np.concatenate(b_parts)
    start_len = np.array([len(b.start) for b in boundaries], dtype=np.int64)
    # At each position only the winner competes: longest start, then first declared.
    order = np.lexsort((bidx, -start_len[bidx], pos))
    pos, bidx = pos[order], bidx[order]
    keep = np.ones(pos.shape[0], dtype=bool)
    keep[1:] = pos[1:] != pos[:-1]
    pos, bidx = pos[keep], bidx[keep]

    row = np.searchsorted(offsets, pos, side="right") - 1
    row_end = offsets[row + 1]
    content = pos + start_len[bidx]
    end, end_stop = row_end.copy(), row_end.copy()
    found = np.zeros(pos.shape[0], dtype=bool)
    by_end: dict[tuple[int, ...], list[int]] = {}
    for bi, b in enumerate(boundaries):
        for seq in b.ends:
            by_end.setdefault(seq, []).append(bi)
    for seq, members in by_end.items():
        sel = np.flatnonzero(np.isin(bidx, members))
        if sel.size == 0:
            continue
        ends = _find(flat, offsets, seq, first_hits)
        if ends.size == 0:
            continue
        k = np.searchsorted(ends, content[sel], side="left")
        q = ends[np.minimum(k, ends.shape[0] - 1)]
        ok = (k < ends.shape[0]) & (q < row_end[sel])  # _find keeps the marker inside its row
        # Several end markers: the first one in the row wins, the longest where two begin together.
        ok &= ~found[sel] | (q < end[sel]) | ((q == end[sel]) & (len(seq) > end_stop[sel] - end[sel]))
        end[sel] = np.where(ok, q, end[sel])
        end_stop[sel] = np.where(ok, q + len(seq), end_stop[sel])
        found[sel] |= ok
    resume_at_end = np.array([not b.include_end for b in boundaries], dtype=bool)[bidx] & found
    resume = np.where(resume_at_end, end, end_stop)
    succ = np.searchsorted(pos, resume, side="left")
    irregular = succ != np.arange(1, pos.shape[0] + 1)
    if irregular.any():
        accepted = np.ones(pos.shape[0], dtype=bool)
        row_first = np.searchsorted(row, np.arange(offsets.shape[0]), side="left")
        succ_l = succ.tolist()
        for r in np.unique(row[irregular]).tolist():
            lo, hi = int(row_first[r]), int(row_first[r + 1])
            accepted[lo:hi] = False
            i = lo
            while i < hi:
                accepted[i] = True
                i = succ_l[i]
        pos, bidx, content, end, end_stop, found, row = (
            a[accepted] for a in (pos, bidx, content, end, end_stop, found, row)
        )
    return Turns(pos, bidx, content, end, end_stop, found, row)


def trained_spans(
    flat: np.ndarray,
    offsets: np.ndarray,
    boundaries: Sequence[RoleBoundary],
    roles: Iterable[str],
    train_on_eos: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint [start, stop) flat intervals that are trained (before pad/media masking)."""
    t = scan(flat, offsets, boundaries)
    roles = set(roles)
    trainable = np.array([b.role in roles for b in boundaries], dtype=bool)[t.boundary]
    inc_start = np.array([b.include_start for b in boundaries], dtype=bool)[t.boundary]
    inc_end = np.array([b.trains_end for b in boundaries], dtype=bool)[t.boundary]
    has_end = t.found & inc_end
    if train_on_eos == "turn":
        eos = has_end & trainable
    elif train_on_eos == "all":
        eos = has_end
    elif train_on_eos == "last":
        # Per row, the last trainable turn whose end was found; its marker only if include_end.
        idx = np.flatnonzero(trainable & t.found)
        if idx.size:
            is_last = np.ones(idx.shape[0], dtype=bool)
            is_last[:-1] = t.row[idx[:-1]] != t.row[idx[1:]]
            idx = idx[is_last]
        eos = np.zeros(t.pos.shape[0], dtype=bool)
        eos[idx] = True
        eos &= inc_end
    else:
        eos = np.zeros(t.pos.shape[0], dtype=bool)
    # A trainable turn is one interval (its end marker adjoins its content); the end marker of an
    # untrained turn ("all") is its own interval. Turns are disjoint and in order, so are these.
    start = np.where(trainable, np.where(inc_start, t.pos, t.content), t.end)
    stop = np.where(eos, t.end_stop, t.end)
    sel = (trainable | eos) & (stop > start)
    return start[sel], stop[sel]


def _isin(flat: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`np.isin` for the handful of pad/media ids: one comparison pass per id is ~3x faster."""
    if ids.size > 16:
        return np.isin(flat, ids)
    hit = np.zeros(flat.shape[0], dtype=bool)
    for i in ids.tolist():
        hit |= flat == i
    return hit


def _mask_from_spans(n: int, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    delta = np.bincount(start, minlength=n + 1)[: n + 1] - np.bincount(stop, minlength=n + 1)[: n + 1]
    return np.cumsum(delta[:n]) > 0


def _spans(flat, offsets, boundaries, roles, train_on_eos, train_on_inputs):
    if train_on_inputs:
        lengths = np.diff(offsets)
        return offsets[:-1][lengths > 0], offsets[1:][lengths > 0]
    return trained_spans(flat, offsets, boundaries, roles, train_on_eos)


def label_flat(
    flat: np.ndarray,
    offsets: np.ndarray,
    boundaries: Sequence[RoleBoundary],
    *,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    ignore_ids: Iterable[int] = (),
) -> np.ndarray:
    """Labels for a batch in Arrow's list layout (values + offsets, as `datasets` stores token rows):
    the fastest entry, no Python object per token."""
    roles = check_knobs(boundaries, roles_to_train, train_on_eos, train_on_inputs)
    flat = np.asarray(flat, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    keep = _mask_from_spans(
        flat.shape[0], *_spans(flat, offsets, boundaries, roles, train_on_eos, train_on_inputs)
    )
    ignore = np.fromiter({int(i) for i in ignore_ids}, dtype=np.int64)
    if ignore.size:
        keep &= ~_isin(flat, ignore)
    return np.where(keep, flat, IGNORE_INDEX)


# --- per-row scanner on Python lists ----------------------------------------------------------------
#
# `build_labels` / `build_labels_batch` take and return Python lists, so converting every token to and
# from numpy would cost more than the scan. Instead each row becomes a str with one character per token
# (C-speed: list -> array('I') -> UCS-4 array -> str; ids that are not code points fall back to a per-row
# alphabet of the marker and ignore ids), and one compiled regex (`_compile`) walks the turns with the
# scanner's exact semantics. Python sees only the labelled turns (up to four per match) and copies each
# trained span with one slice assignment; pad/media ids are found with a C-speed `in` per id and masked
# run by run.


_IDS_TYPECODE = next((c for c in "IL" if array(c).itemsize == 4), None)
# An array of UCS-4 characters turns the ids' bytes into a str without a codec: the UTF-32 decoder takes its slow
# error-handler path at every id in the surrogate range (0xD800-0xDFFF), which 40 % of real Qwen rows contain.
# "w" is Python 3.13's UCS-4 code; "u" (wchar_t, deprecated in 3.13) is UCS-4 where wchar_t has 4 bytes.
_UCS4_TYPECODE = "w" if "w" in typecodes else ("u" if array("u").itemsize == 4 else None)
_decode_utf32 = codecs.utf_32_le_decode if sys.byteorder == "little" else codecs.utf_32_be_decode
_MAX_CHAR = 0x10FFFF


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything a labelling call needs that depends only on its arguments (cached per arguments)."""

    boundaries: tuple[RoleBoundary, ...]
    roles: frozenset
    train_on_eos: str
    train_on_inputs: bool
    ignore: tuple[int, ...]
    direct: tuple | None  # _compile(...) with chr(id) as the alphabet; None: ids can't all be chars
    # Boundaries the regex walk does not express (several end markers, `end_is_stop`): such rows take the
    # numpy scan, which has the same semantics (tests/test_masking_scanner.py compares both with a reference).
    numpy_only: bool = False
    fallback: list = field(default_factory=list)  # (char, _compile(...)) for other ids, built when first needed


def _compile(boundaries, roles, train_on_eos: str, ignore, char: dict[int, str]) -> tuple:
    """(turn regex, (spans, recs), ignore (char, run regex) pairs) for one alphabet (`char`: id -> char).

    At a position the winner is the longest start marker that matches there (the first declared
    among identical ones), so the boundaries are ordered longest first and duplicates dropped.
    Turns that label something ("yielding": trainable, or with train_on_eos="all" one whose end
    marker is trained) each end one match. The others are consumed inside the match that follows,
    by a possessive loop that stops where a yielding boundary wins (a yielding start matches and no
    longer consumed one does) or at the end of the row, so Python sees only the labelled turns.

    When every yielding turn is trained the same way, a match covers up to _TURNS_PER_MATCH turns
    and group k spans the k-th turn's trained tokens (spans is None). Otherwise a match is one turn:
    its `lastindex` says which boundary opened it and whether its end was found, and so which group
    spans the trained tokens. The last group marks the end of the row.
    """
    ign = tuple((c, re.compile(re.escape(c) + "+")) for c in sorted({char[t] for t in ignore if t in char}))
    order, seen = [], set()
    for i in sorted(range(len(boundaries)), key=lambda i: (-len(boundaries[i].start), i)):
        if boundaries[i].start not in seen:  # an identical later start can never win
            seen.add(boundaries[i].start)
            order.append(boundaries[i])

    def yields(b: RoleBoundary) -> bool:
        return b.role in roles or (train_on_eos == "all" and b.include_end and bool(b.end))

    ys = [b for b in order if yields(b)]
    if not ys:
        return None, ([0], None), ign
    us = [b for b in order if not yields(b)]

    def text(seq: tuple[int, ...]) -> str:
        return re.escape("".join(char[t] for t in seq))

    def body(b: RoleBoundary) -> str:  # the content: up to the first end marker, or the row's end
        if not b.end:
            return r"[\s\S]*+"
        e0 = re.escape(char[b.end[0]])
        if len(b.end) == 1:
            return f"[^{e0}]*+"
        return f"(?:[^{e0}]++|{e0}(?!{text(b.end[1:])}))*+"

    consumed = [
        text(b.start) + body(b) + (f"(?:{text(b.end)})?" if b.end and b.include_end else "") for b in us
    ]
    firsts = re.escape("".join(sorted({char[b.start[0]] for b in order})))
    # A yielding start wins where it matches unless a longer consumed start matches there too, which
    # then begins with it.
    wins = "|".join(
        text(y.start)
        + "".join(f"(?!{text(u.start[len(y.start) :])})" for u in us if u.start[: len(y.start)] == y.start)
        for y in ys
    )
    # Tokens that cannot open a turn are skipped in one step; elsewhere, unless a yielding start wins,
    # a consumed turn or a single token.
    loop = f"(?:[^{firsts}]++|(?!{wins})(?:" + "".join(f"{c}|" for c in consumed) + f"[{firsts}]))*+"
    shapes = {(b.role in roles, b.include_start, b.end, b.include_end) for b in ys}
    if train_on_eos != "last" and len(shapes) == 1 and next(iter(shapes))[0]:
        # Every yielding turn is trained the same way (the usual case): the starts are one
        # alternation, each turn's trained tokens are one group, and a match covers up to
        # _TURNS_PER_MATCH turns (groups 1..), which saves Python work per turn.
        b = ys[0]
        starts = "(?:" + "|".join(text(y.start) for y in ys) + ")"
        c = body(b)
        if b.end and b.include_end and train_on_eos in ("turn", "all"):
            c += f"(?:{text(b.end)})?"
            turn = f"({starts}{c})" if b.include_start else f"{starts}({c})"
        else:  # the end marker, if consumed at all, is not trained
            turn = f"({starts}{c})" if b.include_start else f"{starts}({c})"
            if b.end and b.include_end:
                turn += f"(?:{text(b.end)})?"
            # include_end=False: the match (or the next turn's loop) resumes at the end marker
        nested = ""
        for _ in range(_TURNS_PER_MATCH - 1):
            nested = f"(?:{loop}{turn}{nested})?"
        return re.compile(f"{loop}(?:{turn}{nested}|()\\Z)"), (None, None), ign

    # Groups per yielding turn: T spans exactly its trained tokens (start marker if include_start,
    # content, and the end marker where train_on_eos trains it), E is its end marker. `spans` maps a
    # match's `lastindex` to the group to copy (0: none); `recs` (train_on_eos="last") to 1 where it is
    # the found end marker of a trainable turn, 2 where that marker is never trained (include_end=False).
    alts, spans, recs = [], [0], [0]

    def group(pattern: str, span: int, rec: int = 0) -> str:
        spans.append(span)
        recs.append(rec)
        return f"({pattern})"

    last = train_on_eos == "last"
    for b in ys:
        s, c = text(b.start), body(b)
        if b.role not in roles:  # train_on_eos="all", include_end: the end marker alone
            t = len(spans)
            alts.append(s + group("", 0) + c + group(text(b.end), t + 1) + "?")
            continue
        t = len(spans)
        if not b.end:
            alts.append(group(s + c, t) if b.include_start else s + group(c, t))
        elif b.include_end and train_on_eos in ("turn", "all"):
            inner = c + f"({text(b.end)})?"  # closes before T, so `lastindex` is always T
            alts.append(group(s + inner, t) if b.include_start else s + group(inner, t))
            spans.append(0)
            recs.append(0)
        else:
            head = group(s + c, t) if b.include_start else s + group(c, t)
            if b.include_end:  # "none", "last": content only; "last" adds the row's last marker
                alts.append(head + group(text(b.end), t, 1 if last else 0) + "?")
            else:  # the match stops at the end marker, where the next search resumes
                alts.append(head + "(?:(?=" + group(text(b.end), t, 2 if last else 0) + "))?")
    spans.append(0)
    recs.append(0)
    return re.compile(loop + "(?:" + "|".join(alts) + r"|()\Z)"), (spans, recs if last else None), ign


_TURNS_PER_MATCH = 4
_GROUPS = tuple(range(1, _TURNS_PER_MATCH + 1))
_PLANS: dict = {}
_LAST: list = [None]  # the last call's arguments and plan: one row per call repeats them
_IMMUTABLE = (tuple, str, frozenset)


def _plan(boundaries, roles_to_train, train_on_eos, train_on_inputs, ignore_ids) -> _Plan:
    bs = tuple(boundaries)
    last = _LAST[0]
    if (
        last is not None
        and last[1] is roles_to_train
        and last[2] is ignore_ids
        and last[3] == train_on_eos
        and last[4] == train_on_inputs
        and last[0] == bs
    ):
        return last[5]
    roles_key = (roles_to_train,) if isinstance(roles_to_train, str) else tuple(roles_to_train)
    ignore = tuple(ignore_ids)
    key = (bs, roles_key, train_on_eos, bool(train_on_inputs), ignore)  # boundaries hash by value
    try:
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable knob: check_knobs below says what is wrong with it
        plan = None
    if plan is None:
        plan = _new_plan(bs, roles_key, train_on_eos, train_on_inputs, ignore, key)
    if type(roles_to_train) in _IMMUTABLE and type(ignore_ids) in _IMMUTABLE:
        _LAST[0] = (bs, roles_to_train, ignore_ids, train_on_eos, train_on_inputs, plan)
    return plan


def _new_plan(bs, roles_key, train_on_eos, train_on_inputs, ignore, key) -> _Plan:
    roles = frozenset(check_knobs(bs, roles_key, train_on_eos, train_on_inputs))
    ignore_set = {int(i) for i in ignore}
    tokens = {t for b in bs for t in b.start + b.end}
    numpy_only = any(b.more_ends or b.end_is_stop for b in bs)
    direct = None
    if not numpy_only and _IDS_TYPECODE is not None and all(0 <= t <= _MAX_CHAR for t in tokens):
        char = {t: chr(t) for t in tokens | {i for i in ignore_set if 0 <= i <= _MAX_CHAR}}
        direct = _compile(bs, roles, train_on_eos, ignore_set, char)
    plan = _Plan(bs, roles, train_on_eos, bool(train_on_inputs), tuple(sorted(ignore_set)), direct, numpy_only)
    if len(_PLANS) >= 256:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _remapped(plan: _Plan) -> tuple[dict, tuple]:
    """The fallback alphabet for rows whose ids are not all code points (negative, > 0x10FFFF, or
    not ints): every marker and ignore id gets its own character, every other token '\\0'."""
    if not plan.fallback:
        tokens = sorted({t for b in plan.boundaries for t in b.start + b.end} | set(plan.ignore))
        char = {t: chr(i + 1) for i, t in enumerate(tokens)}
        plan.fallback.append((char, _compile(plan.boundaries, plan.roles, plan.train_on_eos, plan.ignore, char)))
    return plan.fallback[0]


def _row_text(ids: list, plan: _Plan) -> tuple[str, tuple]:
    """The row as one character per token, and the compiled patterns for that alphabet."""
    if plan.direct is not None:
        try:
            buf = array(_IDS_TYPECODE)
            buf.fromlist(ids)
            if _UCS4_TYPECODE is not None:
                chars = array(_UCS4_TYPECODE)
                chars.frombytes(buf.tobytes())
                return chars.tounicode(), plan.direct  # ValueError above 0x10FFFF
            return _decode_utf32(buf, "surrogatepass")[0], plan.direct
        except (OverflowError, TypeError, ValueError):  # UnicodeDecodeError is a ValueError
            pass
    char, compiled = _remapped(plan)
    get = char.get
    return "".join([get(t, "\0") for t in ids]), compiled


def _label_row(ids: list, plan: _Plan) -> list[int]:
    n = len(ids)
    if not n:
        return []
    if plan.train_on_inputs and not plan.ignore:
        return ids[:]
    if plan.numpy_only:
        return label_flat(np.asarray(ids, dtype=np.int64), np.array([0, n]), plan.boundaries,
                          roles_to_train=tuple(plan.roles), train_on_eos=plan.train_on_eos,
                          train_on_inputs=plan.train_on_inputs, ignore_ids=plan.ignore).tolist()
    s, (turn_re, (spans, recs), ignore) = _row_text(ids, plan)
    if plan.train_on_inputs:
        labels = ids[:]
    else:
        labels = [IGNORE_INDEX] * n
        if turn_re is None:  # no boundary labels anything
            pass
        elif spans is None:  # up to _TURNS_PER_MATCH trained turns per match, in groups 1, 2, ...
            for m in turn_re.finditer(s):
                for g in _GROUPS:
                    x, y = m.span(g)
                    if x < 0:
                        break
                    labels[x:y] = ids[x:y]
        elif recs is None:
            for m in turn_re.finditer(s):
                g = spans[m.lastindex]
                if g:
                    x, y = m.span(g)
                    labels[x:y] = ids[x:y]
        else:  # train_on_eos="last": also the end marker of the row's last trained turn
            last = None
            for m in turn_re.finditer(s):
                li = m.lastindex
                g = spans[li]
                if g:
                    x, y = m.span(g)
                    labels[x:y] = ids[x:y]
                if recs[li]:
                    last = m.span(li) if recs[li] == 1 else None
            if last is not None:
                labels[last[0] : last[1]] = ids[last[0] : last[1]]
    for c, runs in ignore:  # pad and media ids: a C-speed membership test per id, then only its runs
        if c in s:
            for m in runs.finditer(s):
                x, y = m.span()
                labels[x:y] = [IGNORE_INDEX] * (y - x)
    return labels


def build_labels_batch(
    rows: Sequence[Sequence[int]],
    boundaries: Sequence[RoleBoundary],
    *,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    ignore_ids: Iterable[int] = (),
) -> list[list[int]]:
    """`build_labels` for many rows (what `Masker` uses); the same labels as `label_flat`."""
    plan = _plan(boundaries, roles_to_train, train_on_eos, train_on_inputs, ignore_ids)
    return [_label_row(r if isinstance(r, list) else np.asarray(r).reshape(-1).tolist(), plan) for r in rows]


def build_labels(
    input_ids: Sequence[int],
    boundaries: Sequence[RoleBoundary],
    *,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    ignore_ids: Iterable[int] = (),
) -> list[int]:
    """Labels for one row: the id where trained, -100 elsewhere (see docs/masking.md for the rules)."""
    plan = _plan(boundaries, roles_to_train, train_on_eos, train_on_inputs, ignore_ids)
    if not isinstance(input_ids, list):
        input_ids = np.asarray(input_ids).reshape(-1).tolist()
    return _label_row(input_ids, plan)
