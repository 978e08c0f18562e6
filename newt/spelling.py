"""Which real name a misspelt one was meant to be: "did you mean" only for close spellings, since no suggestion
beats a wrong one. Used for recipe keys, enumeration values, optimizer and template names."""

from __future__ import annotations

import difflib
from typing import Any


def _osa_distance(a: str, b: str) -> int:
    """Edit distance counting a swap of neighbours as one edit (optimal string alignment)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def close_match(word: str, options: Any) -> str | None:
    """The option `word` is a misspelling of, or None. Only a close spelling counts (1 edit for short words, 2 up
    to 12 characters, 3 beyond): a different key that shares a prefix (`gradient_checkpointing_kwargs` vs
    `gradient_checkpointing`) is not a typo, and no suggestion beats a wrong one."""
    word = str(word)
    limit = 1 if len(word) <= 5 else 2 if len(word) <= 12 else 3
    scored = [(_osa_distance(word.lower(), str(o).lower()), str(o)) for o in options]
    best = min((d for d, _ in scored), default=None)
    if best is None or not 0 < best <= limit:
        return None
    tied = [o for d, o in scored if d == best]
    return difflib.get_close_matches(word, tied, n=1, cutoff=0)[0]  # a tie goes to the most similar
