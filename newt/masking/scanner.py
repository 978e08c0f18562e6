"""The role-boundary scanner: token ids + declared turn markers -> labels, and the turns behind them.

This module decides loss masking for every path (text and multimodal) and finds the turns the mask audit
checks; everything else in `newt.masking` only finds the boundaries and checks the result. It is one engine:
each row becomes a str with one character per token, and a regex compiled once per boundary set walks its
turns with the scan's rules (docs/masking.md "Scanner semantics"), so Python only visits the turns it acts on.
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


@dataclass(frozen=True, slots=True)
class Turn:
    """One scanned turn of a row: start marker [pos, content), content [content, end), end marker
    [end, end_stop) — empty when none was found and the turn runs to the end of the row."""

    boundary: int  # index into the boundaries the row was scanned with
    pos: int
    content: int
    end: int
    end_stop: int

    @property
    def found(self) -> bool:
        """Whether the turn's end marker was found (an end marker is never empty)."""
        return self.end_stop > self.end


# --- the engine -----------------------------------------------------------------------------------------
#
# Callers hand over Python lists, so converting every token to and from numpy would cost more than the scan.
# Instead each row becomes a str with one character per token (C-speed: list -> array('I') -> UCS-4 array ->
# str; ids that are not code points fall back to a per-row alphabet of the marker and ignore ids), and one
# regex, compiled once per boundary set (`_compile`), walks the turns with the scan's exact rules. Turns that
# label nothing are consumed inside the regex, so Python sees only the turns it must act on: it copies each
# trained span with one slice assignment, and finds pad/media ids with a C-speed `in` per id, masking them run
# by run.


_IDS_TYPECODE = next((c for c in "IL" if array(c).itemsize == 4), None)
# An array of UCS-4 characters turns the ids' bytes into a str without a codec: the UTF-32 decoder takes its
# slow error-handler path at every id in the surrogate range (0xD800-0xDFFF), which 40 % of real Qwen rows
# contain.
# "w" is Python 3.13's UCS-4 code; "u" (wchar_t, deprecated in 3.13) is UCS-4 where wchar_t has 4 bytes.
_UCS4_TYPECODE = "w" if "w" in typecodes else ("u" if array("u").itemsize == 4 else None)
_decode_utf32 = codecs.utf_32_le_decode if sys.byteorder == "little" else codecs.utf_32_be_decode
_MAX_CHAR = 0x10FFFF
_TURNS_PER_MATCH = 4
_GROUPS = tuple(range(1, _TURNS_PER_MATCH + 1))


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A boundary set's patterns for one alphabet. `turns` is None for the uniform case, where group k of a
    match spans the k-th trained turn's trained tokens; otherwise each match is one turn and
    `turns[m.lastindex]` is (boundary index, content group, end found) — None for the end-of-row group."""

    regex: re.Pattern | None  # None: no turn labels anything
    turns: tuple | None
    ignore: tuple  # (char, regex of its runs) per pad/media id
    # Per `lastindex` (labelling, one match per turn): (x, shift, y, last) — from group x's start - shift to
    # group y's end is trained (x 0: nothing); `last` (train_on_eos="last"): the end group that becomes the
    # row's last trained end marker, -1 where it is the found end of a trainable turn that never trains it.
    rules: tuple | None = None


def _compile(
    bs: tuple[RoleBoundary, ...], roles: frozenset | None, train_on_eos: str, ignore, char: dict[int, str]
) -> _Compiled:
    """The patterns for one alphabet (`char`: id -> char); `roles` None: every turn is reported (`turns`).

    At a position the winner is the longest start marker that matches there (the first declared among
    identical ones), so the boundaries are ordered longest first and duplicates dropped. A turn's content runs
    up to the first position where one of its end markers begins; the longest of those that begin there is its
    end. Turns that label something ("yielding": trainable, or with train_on_eos="all" one whose end marker is
    trained) each end one match. The others are consumed inside the match that follows, by a possessive loop
    that stops where a yielding boundary wins (a yielding start matches and no longer consumed one does) or at
    the end of the row. The last alternative, an empty group at the end of the row, ends the walk.
    """
    ign = tuple((c, re.compile(re.escape(c) + "+")) for c in sorted({char[t] for t in ignore if t in char}))
    order, seen = [], set()
    for i in sorted(range(len(bs)), key=lambda i: (-len(bs[i].start), i)):
        if bs[i].start not in seen:  # an identical later start can never win
            seen.add(bs[i].start)
            order.append(i)

    def yields(b: RoleBoundary) -> bool:
        return roles is None or b.role in roles or (train_on_eos == "all" and b.trains_end and bool(b.end))

    ys, us = [i for i in order if yields(bs[i])], [bs[i] for i in order if not yields(bs[i])]
    if not ys:
        return _Compiled(None, None, ign)

    def text(seq: tuple[int, ...]) -> str:
        return re.escape("".join(char[t] for t in seq))

    def ends(b: RoleBoundary) -> str:  # longest first: of two that begin at one token, the longest is the end
        return "(?:" + "|".join(text(e) for e in sorted(set(b.ends), key=len, reverse=True)) + ")"

    def body(b: RoleBoundary) -> str:  # the content: up to the first end marker, or the row's end
        if not b.end:
            return r"[\s\S]*+"
        heads = re.escape("".join(sorted({char[e[0]] for e in b.ends})))
        if all(len(e) == 1 for e in b.ends):
            return f"[^{heads}]*+"
        return f"(?:[^{heads}]++|(?!{ends(b)})[{heads}])*+"

    consumed = [text(b.start) + body(b) + (f"{ends(b)}?" if b.end and b.include_end else "") for b in us]
    firsts = re.escape("".join(sorted({char[bs[i].start[0]] for i in order})))
    # A yielding start wins where it matches unless a longer consumed start matches there too, which then
    # begins with it.
    wins = "|".join(
        text(y.start)
        + "".join(f"(?!{text(u.start[len(y.start) :])})" for u in us if u.start[: len(y.start)] == y.start)
        for y in (bs[i] for i in ys)
    )
    # Tokens that cannot open a turn are skipped in one step; elsewhere, unless a yielding start wins, a
    # consumed turn or a single token.
    loop = f"(?:[^{firsts}]++|(?!{wins})(?:" + "".join(f"{c}|" for c in consumed) + f"[{firsts}]))*+"
    b = bs[ys[0]]
    shapes = {(bs[i].role in (roles or ()), bs[i].include_start, bs[i].ends, bs[i].include_end) for i in ys}
    # An end marker that is trained but not consumed (`end_is_stop`: the scan resumes at it) cannot share one
    # group with its content, so such turns take the one-turn-per-match form.
    stop_trained = train_on_eos in ("turn", "all") and any(
        bs[i].end_is_stop and not bs[i].include_end and bs[i].end for i in ys
    )
    uniform = roles is not None and len(shapes) == 1 and b.role in roles
    if uniform and train_on_eos != "last" and not stop_trained:
        # Every yielding turn is trained the same way (the usual case): the starts are one alternation, each
        # turn's trained tokens are one group, and a match covers up to _TURNS_PER_MATCH turns (groups 1..).
        starts = "(?:" + "|".join(text(bs[i].start) for i in ys) + ")"
        c = body(b)
        if b.end and b.include_end and train_on_eos in ("turn", "all"):
            c += f"{ends(b)}?"
        turn = f"({starts}{c})" if b.include_start else f"{starts}({c})"
        if b.end and b.include_end and train_on_eos not in ("turn", "all"):
            turn += f"{ends(b)}?"  # consumed, not trained
        # include_end=False: the match (or the next turn's loop) resumes at the end marker
        nested = ""
        for _ in range(_TURNS_PER_MATCH - 1):
            nested = f"(?:{loop}{turn}{nested})?"
        return _Compiled(re.compile(f"{loop}(?:{turn}{nested}|()\\Z)"), None, ign)
    # One match per yielding turn: its content group, then its end marker's group (consumed, or with
    # include_end=False only looked at, so the next match resumes at it). `lastindex` is the end group where
    # the end was found, else the content group, and so says which boundary opened the turn and whether it
    # ended.
    alts, turns, rules = [], [None], [None]
    for i in ys:
        y = bs[i]
        g = len(turns)  # the content group; the end marker's group is g + 1
        end = "" if not y.end else f"({ends(y)})?" if y.include_end else f"(?:(?=({ends(y)})))?"
        alts.append(f"{text(y.start)}({body(y)}){end}")
        trained = roles is not None and y.role in roles
        shift = len(y.start) if y.include_start else 0
        eos = y.trains_end and (train_on_eos == "all" or (trained and train_on_eos == "turn"))
        last = (g + 1 if y.trains_end else -1) if trained and train_on_eos == "last" else 0
        for found in (False, True) if y.end else (False,):
            turns.append((i, g, found))
            if trained:
                rules.append((g, shift, g + 1 if found and eos else g, last if found else 0))
            else:
                rules.append((g + 1, 0, g + 1, 0) if found and eos else (0, 0, 0, 0))
    turns.append(None)
    rules.append(None)
    return _Compiled(re.compile(loop + "(?:" + "|".join(alts) + r"|()\Z)"), tuple(turns), ign, tuple(rules))


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything a call needs that depends only on its arguments (cached per arguments). `roles` None: a
    plan that reports every turn (`turns`) instead of labelling."""

    boundaries: tuple[RoleBoundary, ...]
    roles: frozenset | None
    train_on_eos: str
    train_on_inputs: bool
    ignore: tuple[int, ...]
    direct: _Compiled | None  # chr(id) as the alphabet; None: the ids can't all be chars
    fallback: list = field(default_factory=list)  # (char, _Compiled) for other ids, built when first needed


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
    if roles_to_train is None or isinstance(roles_to_train, str):
        roles_key = roles_to_train if roles_to_train is None else (roles_to_train,)
    else:
        roles_key = tuple(roles_to_train)
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
    roles = None
    if roles_key is not None:  # a labelling plan: check its knobs once
        roles = frozenset(check_knobs(bs, roles_key, train_on_eos, train_on_inputs))
    ignore_set = {int(i) for i in ignore}
    tokens = {t for b in bs for seq in (b.start, *b.ends) for t in seq}
    direct = None
    if _IDS_TYPECODE is not None and all(0 <= t <= _MAX_CHAR for t in tokens):
        char = {t: chr(t) for t in tokens | {i for i in ignore_set if 0 <= i <= _MAX_CHAR}}
        direct = _compile(bs, roles, train_on_eos, ignore_set, char)
    plan = _Plan(bs, roles, train_on_eos, bool(train_on_inputs), tuple(sorted(ignore_set)), direct)
    if len(_PLANS) >= 256:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _remapped(plan: _Plan) -> tuple[dict, _Compiled]:
    """The fallback alphabet for rows whose ids are not all code points (negative, > 0x10FFFF, or
    not ints): every marker and ignore id gets its own character, every other token '\\0'."""
    if not plan.fallback:
        tokens = {t for b in plan.boundaries for seq in (b.start, *b.ends) for t in seq}
        tokens = sorted(tokens | set(plan.ignore))
        char = {t: chr(i + 1) for i, t in enumerate(tokens)}
        compiled = _compile(plan.boundaries, plan.roles, plan.train_on_eos, plan.ignore, char)
        plan.fallback.append((char, compiled))
    return plan.fallback[0]


def _row_text(ids: list, plan: _Plan) -> tuple[str, _Compiled]:
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
    s, compiled = _row_text(ids, plan)
    if plan.train_on_inputs:
        labels = ids[:]
    else:
        labels = [IGNORE_INDEX] * n
        if compiled.regex is None:  # no boundary labels anything
            pass
        elif compiled.turns is None:  # up to _TURNS_PER_MATCH trained turns per match, in groups 1, 2, ...
            for m in compiled.regex.finditer(s):
                for g in _GROUPS:
                    x, y = m.span(g)
                    if x < 0:
                        break
                    labels[x:y] = ids[x:y]
        else:  # one match per turn that labels something
            rules, last = compiled.rules, None
            for m in compiled.regex.finditer(s):
                rule = rules[m.lastindex]
                if rule is None:  # the end of the row
                    break
                x, shift, y, rec = rule
                if x:
                    x, y = m.start(x) - shift, m.end(y)
                    labels[x:y] = ids[x:y]
                if rec:
                    last = m.span(rec) if rec > 0 else None
            if last is not None:
                labels[last[0] : last[1]] = ids[last[0] : last[1]]
    for c, runs in compiled.ignore:  # pad and media ids: a C-speed membership test per id, then only its runs
        if c in s:
            for m in runs.finditer(s):
                x, y = m.span()
                labels[x:y] = [IGNORE_INDEX] * (y - x)
    return labels


def _as_list(ids: Sequence[int]) -> list:
    return ids if isinstance(ids, list) else np.asarray(ids).reshape(-1).tolist()


def turns(input_ids: Sequence[int], boundaries: Sequence[RoleBoundary]) -> list[Turn]:
    """Every turn of one row, left to right, by the same scan that labels it (the audit pairs them with the
    messages; `Masker.close_rows` looks at the last)."""
    ids = _as_list(input_ids)
    if not ids or not boundaries:
        return []
    plan = _plan(boundaries, None, "turn", False, ())
    s, compiled = _row_text(ids, plan)
    out = []
    for m in compiled.regex.finditer(s):
        t = compiled.turns[m.lastindex]
        if t is None:  # the end of the row
            break
        i, g, found = t
        c, e = m.span(g)
        x, y = m.span(g + 1) if found else (e, e)
        out.append(Turn(i, c - len(plan.boundaries[i].start), c, x, y))
    return out


def build_labels_batch(
    rows: Sequence[Sequence[int]],
    boundaries: Sequence[RoleBoundary],
    *,
    roles_to_train: Iterable[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    ignore_ids: Iterable[int] = (),
) -> list[list[int]]:
    """`build_labels` for many rows (what `Masker` uses)."""
    plan = _plan(boundaries, roles_to_train, train_on_eos, train_on_inputs, ignore_ids)
    return [_label_row(r if isinstance(r, list) else _as_list(r), plan) for r in rows]


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
    return _label_row(_as_list(input_ids), plan)
