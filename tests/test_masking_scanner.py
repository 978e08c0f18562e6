"""The scanner's semantics, one test per rule of docs/masking.md "Scanner semantics"."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newt.masking import MaskingError, RoleBoundary, build_labels, build_labels_batch
from newt.masking.scanner import Turn, turns

X = -100
# Markers: 1 opens a user turn, 2 opens an assistant turn, 9 closes both.
USER, ASSISTANT, END = 1, 2, 9
B = [RoleBoundary("user", [USER], [END]), RoleBoundary("assistant", [ASSISTANT], [END])]


def test_content_of_trainable_role_and_its_end_marker_are_trained():
    row = [0, USER, 5, 6, END, ASSISTANT, 7, 8, END, 4]
    assert build_labels(row, B) == [X, X, X, X, X, X, 7, 8, END, X]


def test_longest_start_wins():
    bs = [RoleBoundary("user", [1], [9]), RoleBoundary("assistant", [1, 2], [9])]
    assert build_labels([1, 2, 5, 9], bs) == [X, X, 5, 9]
    assert build_labels([1, 3, 5, 9], bs) == [X, X, X, X]


def test_first_declared_wins_a_tie():
    bs = [RoleBoundary("assistant", [1], [9]), RoleBoundary("user", [1], [9])]
    assert build_labels([1, 5, 9], bs) == [X, 5, 9]
    assert build_labels([1, 5, 9], bs[::-1]) == [X, X, X]


def test_no_match_moves_one_token():
    # The start [1, 2] only matches at index 1; a scanner that jumped would miss it.
    bs = [RoleBoundary("assistant", [1, 2], [9])]
    assert build_labels([1, 1, 2, 5, 9], bs) == [X, X, X, 5, 9]


def test_end_is_first_occurrence_after_start_and_start_inside_content_is_content():
    # The 2 inside the first assistant turn is content, not a new turn.
    row = [ASSISTANT, 5, ASSISTANT, 6, END, 7, END]
    assert build_labels(row, B) == [X, 5, ASSISTANT, 6, END, X, X]


def test_end_marker_may_not_overlap_the_start():
    bs = [RoleBoundary("assistant", [2], [2])]
    assert build_labels([2, 5, 2, 6], bs) == [X, 5, 2, X]


def test_truncated_turn_trains_content_to_end_of_row_without_end_marker():
    assert build_labels([USER, 5, END, ASSISTANT, 7, 8], B) == [X, X, X, X, 7, 8]
    assert build_labels([USER, 5, END, ASSISTANT, 7, 8], B, train_on_eos="last") == [X, X, X, X, 7, 8]
    # "last" is the last trainable turn whose end was found: a truncated turn after it does not take it away.
    assert build_labels([ASSISTANT, 6, END, ASSISTANT, 7], B, train_on_eos="last") == [X, 6, END, X, 7]


def test_empty_end_runs_to_end_of_row():
    bs = [RoleBoundary("assistant", [2])]
    assert build_labels([0, 2, 5, 9, 2, 6], bs) == [X, X, 5, 9, 2, 6]


def test_include_start_trains_the_start_marker():
    bs = [RoleBoundary("assistant", [2, 3], [9], include_start=True)]
    assert build_labels([0, 2, 3, 5, 9], bs) == [X, 2, 3, 5, 9]


ROW = [USER, 5, END, ASSISTANT, 6, END, USER, 7, END, ASSISTANT, 8, END]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("turn", [X, X, X, X, 6, END, X, X, X, X, 8, END]),
        ("all", [X, X, END, X, 6, END, X, X, END, X, 8, END]),
        ("none", [X, X, X, X, 6, X, X, X, X, X, 8, X]),
        ("last", [X, X, X, X, 6, X, X, X, X, X, 8, END]),
    ],
)
def test_train_on_eos(mode, expected):
    assert build_labels(ROW, B, train_on_eos=mode) == expected


def test_train_on_eos_last_is_per_row():
    rows = [ROW, [ASSISTANT, 4, END, USER, 3, END]]
    out = build_labels_batch(rows, B, train_on_eos="last")
    assert out[0][-1] == END and out[0][5] == X
    assert out[1] == [X, 4, END, X, X, X]


def test_include_end_false_never_trains_end_and_resumes_at_it():
    # Mistral: [INST]=1 user [/INST]=2 assistant </s>=9; [/INST] closes the user turn and opens the assistant.
    bs = [RoleBoundary("user", [1], [2], include_end=False), RoleBoundary("assistant", [2], [9])]
    row = [0, 1, 5, 2, 6, 9, 1, 7, 2, 8, 9]
    assert build_labels(row, bs) == [X, X, X, X, 6, 9, X, X, X, 8, 9]
    assert build_labels(row, bs, roles_to_train=["user"], train_on_eos="all") == [
        X,
        X,
        5,
        X,
        X,
        9,
        X,
        7,
        X,
        X,
        9,
    ]
    # "last": the last trainable turn whose end was found is the second user turn; its marker is not trained.
    last = build_labels(row, bs, roles_to_train=["user"], train_on_eos="last")
    assert last == [X, X, 5, X, X, X, X, 7, X, X, X]
    # ...and a user turn after the last assistant one takes the assistant's end marker away.
    last = build_labels([2, 6, 9, 1, 7, 2], bs, roles_to_train=["user", "assistant"], train_on_eos="last")
    assert last == [X, 6, X, X, 7, X]


def test_outside_spans_is_masked_and_undeclared_roles_too():
    row = [100, 101, 3, 5, END, ASSISTANT, 6, END]  # BOS, preamble, an undeclared "3" turn
    assert build_labels(row, B) == [X, X, X, X, X, X, 6, END]


def test_pad_and_media_ids_are_masked_inside_trained_spans():
    row = [ASSISTANT, 6, 50, 50, 7, 60, END, 60]
    assert build_labels(row, B, ignore_ids=[50, 60]) == [X, 6, X, X, 7, X, END, X]


def test_train_on_inputs_trains_everything_but_pad_and_media():
    row = [100, USER, 5, END, ASSISTANT, 50, 6, END, 60]
    assert build_labels(row, B, train_on_inputs=True, ignore_ids=[50, 60]) == [
        100,
        USER,
        5,
        END,
        ASSISTANT,
        X,
        6,
        END,
        X,
    ]


def test_unknown_role_is_an_error_listing_known_roles():
    with pytest.raises(
        MaskingError, match=r"'asistant' \(did you mean 'assistant'\?\).*known roles: user, assistant"
    ):
        build_labels([1], B, roles_to_train=["asistant"])


def test_train_on_eos_must_be_known():
    with pytest.raises(MaskingError, match="turn, all, last, none"):
        build_labels([1], B, train_on_eos="always")


def test_empty_start_is_rejected():
    with pytest.raises(MaskingError, match="empty start"):
        RoleBoundary("assistant", [])


def test_rows_do_not_leak_into_each_other():
    # A marker split across two rows must not match; an open turn must not continue into the next row.
    bs = [RoleBoundary("assistant", [2, 3], [9])]
    assert build_labels_batch([[0, 2], [3, 5, 9], [2, 3, 7], [8, 9]], bs) == [
        [X, X],
        [X, X, X],
        [X, X, 7],
        [X, X],
    ]
    assert build_labels_batch([], bs) == []
    assert build_labels_batch([[]], bs) == [[]]


# --- property test against a straightforward reference scanner ----------------------------------


def reference_turns(ids, boundaries):
    """The scan written as plainly as possible (independent of the engine).

    One (boundary index, pos, content, end, end_stop) per turn, as `turns` reports them."""
    n, i, out = len(ids), 0, []
    while i < n:
        best = None
        for k, b in enumerate(boundaries):
            if list(ids[i : i + len(b.start)]) == list(b.start) and (
                best is None or len(b.start) > len(boundaries[best].start)
            ):
                best = k
        if best is None:
            i += 1
            continue
        b = boundaries[best]
        c = i + len(b.start)
        e, end = n, ()
        for j in range(c, n):  # the first end marker in the row; the longest of those starting there
            hits = [seq for seq in b.ends if list(ids[j : j + len(seq)]) == list(seq)]
            if hits:
                e, end = j, max(hits, key=len)
                break
        out.append((best, i, c, e, e + len(end)))
        i = n if not end else e if not b.include_end else e + len(end)
    return out


def reference_labels(ids, boundaries, roles, train_on_eos, train_on_inputs, ignore):
    """Labels from the reference turns, by the rules of docs/masking.md."""
    n = len(ids)
    trained = [train_on_inputs] * n
    last = None
    for k, pos, c, e, stop in [] if train_on_inputs else reference_turns(ids, boundaries):
        b = boundaries[k]
        if b.role in roles:
            for j in range(pos if b.include_start else c, e):
                trained[j] = True
        if stop > e:
            marker = range(e, stop)
            trains_end = b.include_end or b.end_is_stop
            if b.role in roles and train_on_eos == "last":
                last = marker if trains_end else None
            elif trains_end and (train_on_eos == "all" or (b.role in roles and train_on_eos == "turn")):
                for j in marker:
                    trained[j] = True
    for j in last or ():
        trained[j] = True
    return [t if trained[k] and t not in ignore else X for k, t in enumerate(ids)]


token = st.integers(0, 6)
boundary = st.builds(
    RoleBoundary,
    st.sampled_from(["user", "assistant", "system"]),
    st.lists(token, min_size=1, max_size=3),
    st.lists(token, min_size=0, max_size=2),
    st.booleans(),
    st.booleans(),
)
# Boundaries with several end markers, and end markers that are the next turn's stop token.
rich_boundary = st.builds(
    RoleBoundary,
    st.sampled_from(["user", "assistant", "system"]),
    st.lists(token, min_size=1, max_size=3),
    st.lists(token, min_size=1, max_size=2),
    st.booleans(),
    st.booleans(),
    st.lists(st.lists(token, min_size=1, max_size=2), max_size=2),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(token, max_size=40), min_size=1, max_size=4),
    bs=st.lists(boundary, min_size=1, max_size=4),
    eos=st.sampled_from(["turn", "all", "last", "none"]),
    on_inputs=st.booleans(),
    ignore=st.sets(token, max_size=2),
    data=st.data(),
)
def test_agrees_with_reference_scanner(rows, bs, eos, on_inputs, ignore, data):
    known = sorted({b.role for b in bs})
    roles = data.draw(st.lists(st.sampled_from(known), unique=True))
    got = build_labels_batch(
        rows, bs, roles_to_train=roles, train_on_eos=eos, train_on_inputs=on_inputs, ignore_ids=ignore
    )
    for row, labels in zip(rows, got):
        assert turns(row, bs) == [Turn(*t) for t in reference_turns(row, bs)]
        assert labels == reference_labels(row, bs, set(roles), eos, on_inputs, ignore)
        assert all(lab == X for lab in labels if lab in ignore) and all(
            lab == X for t, lab in zip(row, labels) if t in ignore
        )
        assert all(lab in (X, t) for t, lab in zip(row, labels))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(token, max_size=40), min_size=1, max_size=4),
    bs=st.lists(st.one_of(boundary, rich_boundary), min_size=1, max_size=4),
    eos=st.sampled_from(["turn", "all", "last", "none"]),
    on_inputs=st.booleans(),
    ignore=st.sets(token, max_size=2),
    data=st.data(),
)
def test_several_end_markers_and_stop_token_ends_agree_with_reference(rows, bs, eos, on_inputs, ignore, data):
    roles = data.draw(st.lists(st.sampled_from(sorted({b.role for b in bs})), unique=True))
    kw = {"roles_to_train": roles, "train_on_eos": eos, "train_on_inputs": on_inputs, "ignore_ids": ignore}
    expected = [reference_labels(r, bs, set(roles), eos, on_inputs, ignore) for r in rows]
    assert build_labels_batch(rows, bs, **kw) == expected
    assert [build_labels(r, bs, **kw) for r in rows] == expected
    assert [turns(r, bs) for r in rows] == [[Turn(*t) for t in reference_turns(r, bs)] for r in rows]


def test_several_end_markers_and_a_stop_token_end():
    # assistant 5 ... ends at 8 or 9; user 4 ... closed by 5, the assistant's start, which is not trained
    bs = [RoleBoundary("user", [4], [5], include_end=False), RoleBoundary("assistant", [5], [8], more_ends=[[9]])]
    assert build_labels([4, 1, 5, 2, 9, 4, 1, 5, 3, 8], bs) == [X, X, X, 2, 9, X, X, X, 3, 8]
    # GLM-4: the assistant turn is closed by the next <|user|> (4), a stop token: trained as the turn's end
    glm = [RoleBoundary("user", [4], [5], include_end=False), RoleBoundary("assistant", [5], [4], include_end=False,
                                                                           end_is_stop=True)]
    assert build_labels([4, 1, 5, 2, 4, 1, 5, 3], glm) == [X, X, X, 2, 4, X, X, 3]
    assert build_labels([4, 1, 5, 2, 4, 1, 5, 3], glm, train_on_eos="none") == [X, X, X, 2, X, X, X, 3]
    assert build_labels([4, 1, 5, 2, 4, 1, 5, 3], glm, roles_to_train=["user"]) == [X, 1, X, X, X, 1, X, X]


def test_train_on_inputs_without_boundaries_trains_all_but_pad_and_media():
    # The seed's fallback: no role boundaries at all, and roles_to_train left at its default.
    assert build_labels([1, 2, 0, 7], [], train_on_inputs=True, ignore_ids=[0, 7]) == [1, 2, X, X]
    with pytest.raises(MaskingError, match="known roles: none"):
        build_labels([1, 2], [])


# The engine turns each row into a str (one character per id); ids that are not code points
# (negative, surrogates are fine, > 0x10FFFF) or not plain ints take a fallback path. Same labels, same turns.
@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(token, max_size=30), min_size=1, max_size=3),
    bs=st.lists(st.one_of(boundary, rich_boundary), min_size=1, max_size=4),
    eos=st.sampled_from(["turn", "all", "last", "none"]),
    on_inputs=st.booleans(),
    ignore=st.sets(token, max_size=2),
    shift=st.sampled_from([0xD800 - 3, 0x10FFFF - 3, 2**40, -3]),
    noise=st.sampled_from([None, -1, 0x110000, 2**33]),
    kind=st.sampled_from([list, tuple, np.array]),
    data=st.data(),
)
def test_ids_outside_code_points_agree_with_reference(
    rows, bs, eos, on_inputs, ignore, shift, noise, kind, data
):
    roles = data.draw(st.lists(st.sampled_from(sorted({b.role for b in bs})), unique=True))

    def moved(seq):
        return [t + shift for t in seq]

    bs = [
        RoleBoundary(
            b.role,
            moved(b.start),
            moved(b.end),
            b.include_start,
            b.include_end,
            [moved(e) for e in b.more_ends],
            b.end_is_stop,
        )
        for b in bs
    ]
    rows = [moved(r) + ([noise] if noise is not None else []) for r in rows]
    ignore = {t + shift for t in ignore}
    kw = {"roles_to_train": roles, "train_on_eos": eos, "train_on_inputs": on_inputs, "ignore_ids": ignore}
    expected = [reference_labels(r, bs, set(roles), eos, on_inputs, ignore) for r in rows]
    assert build_labels_batch([kind(r) for r in rows], bs, **kw) == expected
    assert [build_labels(kind(r), bs, **kw) for r in rows] == expected
    assert [turns(kind(r), bs) for r in rows] == [[Turn(*t) for t in reference_turns(r, bs)] for r in rows]
