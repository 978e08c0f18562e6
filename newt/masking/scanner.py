"""The role-boundary scanner: token ids + declared turn markers -> labels.

This module decides loss masking for every path (text and multimodal); everything else in
`newt.masking` only finds the boundaries and checks the result. The scan is sequential by nature
(a start marker inside a turn's content is content, not a new turn), but only the marker matches
are visited in Python: matching, span filling and pad/media masking run in numpy over a whole batch.
"""

from __future__ import annotations

import difflib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips (`ignore_index` default)
TRAIN_ON_EOS = ("turn", "all", "last", "none")
TrainOnEos = Literal["turn", "all", "last", "none"]


class MaskingError(ValueError):
    """A masking setting or boundary that cannot be applied; the message says how to fix it."""


@dataclass(frozen=True)
class RoleBoundary:
    """One kind of turn: `start` opens it, the first `end` after the start closes it.

    `start` and `end` are token-id sequences. An empty `end` means the turn runs to the end of
    the row. `include_start` trains the start marker of a trainable turn; `include_end=False`
    never trains the end marker and lets the scan resume *at* it, so it can open the next turn.
    """

    role: str
    start: tuple[int, ...]
    end: tuple[int, ...] = ()
    include_start: bool = False
    include_end: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(t) for t in self.start))
        object.__setattr__(self, "end", tuple(int(t) for t in self.end))
        if not self.start:
            raise MaskingError(
                f"RoleBoundary for role {self.role!r} has an empty start marker; a turn must be opened "
                "by at least one token. Give the marker text that precedes the role's content."
            )


def known_roles(boundaries: Iterable[RoleBoundary]) -> tuple[str, ...]:
    """The role names the boundaries declare, in declaration order, without duplicates."""
    return tuple(dict.fromkeys(b.role for b in boundaries))


def check_knobs(
    boundaries: Sequence[RoleBoundary], roles_to_train: Iterable[str], train_on_eos: str
) -> tuple[str, ...]:
    """Validate the masking knobs against the boundaries; returns `roles_to_train` as a tuple.

    An unknown role is an error, not a no-op: a typo would otherwise mask every token.
    """
    if isinstance(roles_to_train, str):
        roles_to_train = (roles_to_train,)
    roles = tuple(roles_to_train)
    if train_on_eos not in TRAIN_ON_EOS:
        raise MaskingError(f"train_on_eos is {train_on_eos!r}; expected one of {', '.join(TRAIN_ON_EOS)}.")
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
        if b.end:
            by_end.setdefault(b.end, []).append(bi)
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
        end[sel] = np.where(ok, q, row_end[sel])
        end_stop[sel] = np.where(ok, q + len(seq), row_end[sel])
        found[sel] = ok
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
    inc_end = np.array([b.include_end for b in boundaries], dtype=bool)[t.boundary]
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
    roles = check_knobs(boundaries, roles_to_train, train_on_eos)
    flat = np.asarray(flat, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    keep = _mask_from_spans(
        flat.shape[0], *_spans(flat, offsets, boundaries, roles, train_on_eos, train_on_inputs)
    )
    ignore = np.fromiter({int(i) for i in ignore_ids}, dtype=np.int64)
    if ignore.size:
        keep &= ~_isin(flat, ignore)
    return np.where(keep, flat, IGNORE_INDEX)


def build_labels_batch(
    rows: Sequence[Sequence[int]],
    boundaries: Sequence[RoleBoundary],
    *,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    ignore_ids: Iterable[int] = (),
) -> list[list[int]]:
    """`build_labels` for many rows in one numpy pass (what `Masker` uses).

    The labels are built as lists directly (all -100, then each trained interval copied from the
    row), which avoids converting every token to and from numpy on the way out.
    """
    roles = check_knobs(boundaries, roles_to_train, train_on_eos)
    rows = [r if isinstance(r, list) else np.asarray(r).reshape(-1).tolist() for r in rows]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = int(offsets[-1])
    buf = array("q")  # array.fromlist is the fastest list -> int64 conversion (about 1.3x np.fromiter)
    for r in rows:
        buf.fromlist(r)
    flat = np.frombuffer(buf, dtype=np.int64) if n else np.empty(0, dtype=np.int64)
    start, stop = _spans(flat, offsets, boundaries, roles, train_on_eos, train_on_inputs)
    ignore = np.fromiter({int(i) for i in ignore_ids}, dtype=np.int64)
    hits = np.flatnonzero(_isin(flat, ignore)) if ignore.size else np.empty(0, dtype=np.int64)
    if hits.size and start.size:
        k = np.searchsorted(start, hits, side="right") - 1
        hits = hits[(k >= 0) & (hits < stop[np.maximum(k, 0)])]
    elif hits.size:
        hits = hits[:0]
    if hits.size * 8 > n:  # media-heavy trained rows: per-token fixes would be slower than numpy
        labels = label_flat(
            flat,
            offsets,
            boundaries,
            roles_to_train=roles,
            train_on_eos=train_on_eos,
            train_on_inputs=train_on_inputs,
            ignore_ids=ignore.tolist(),
        ).tolist()
        bounds = offsets.tolist()
        return [labels[bounds[r] : bounds[r + 1]] for r in range(len(rows))]
    row_of = np.searchsorted(offsets, start, side="right") - 1
    base = offsets[row_of]
    neg = [IGNORE_INDEX] * (int(lengths.max()) if len(rows) else 0)
    out = [neg[:m] for m in lengths.tolist()]
    for r, a, z in zip(row_of.tolist(), (start - base).tolist(), (stop - base).tolist()):
        out[r][a:z] = rows[r][a:z]
    if hits.size:
        hr = np.searchsorted(offsets, hits, side="right") - 1
        for r, a in zip(hr.tolist(), (hits - offsets[hr]).tolist()):
            out[r][a] = IGNORE_INDEX
    return out


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
    return build_labels_batch(
        [input_ids],
        boundaries,
        roles_to_train=roles_to_train,
        train_on_eos=train_on_eos,
        train_on_inputs=train_on_inputs,
        ignore_ids=ignore_ids,
    )[0]
