"""The demo's deterministic synthetic task: reverse a short string of letters.

A randomly initialised model scores 0 on it and a tiny one learns it in minutes on a CPU, so the demo shows real
learning end to end. Rows are chat conversations in the OpenAI `messages` format; the same seed gives the same
bytes on every machine. Train and held-out rows never share a string.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ALPHABET = "abcdefgh"


def reversal_rows(n: int, *, seed: int = 0, min_len: int = 3, max_len: int = 6) -> list[dict]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        if word in seen:
            continue
        seen.add(word)
        rows.append({"messages": [{"role": "user", "content": word}, {"role": "assistant", "content": word[::-1]}]})
    return rows


def write_reversal_jsonl(path: str | Path, n: int = 4000, *, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in reversal_rows(n, seed=seed):
            f.write(json.dumps(row, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    import sys

    out = write_reversal_jsonl(sys.argv[1] if len(sys.argv) > 1 else "data/reversal.jsonl")
    print(f"wrote {out}")
