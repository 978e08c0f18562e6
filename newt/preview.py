"""`newt preview`: the first rows of the `prepared` artifact as the model sees them, in about a second.

What it needs is the rows and something to turn ids back into text, not a model, Dagster, torch or `datasets`:

- the rows are read straight from the artifact's Arrow files with pyarrow (the first record batches of the split,
  never the whole split);
- ids are decoded with the `tokenizers` library from the tokenizer's own `tokenizer.json` (what a transformers fast
  tokenizer's `decode` calls); a tokenizer without one, or one that post-processes decoded text, is loaded through
  `newt.models.load_tokenizer` as everywhere else;
- preference and RL rows (`rl: dpo | kto | grpo`) are already text (prompt, chosen/rejected, completion, ...): they
  are shown column by column and need no tokenizer at all.

When `prepared` is not committed under the recipe's current key, `dataset` and `prepared` are built first (and
kept: the next run hits them), exactly as `newt run` would build them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from newt import IGNORE_INDEX

GREEN, RED, DIM, BOLD, RESET = "\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[1m", "\x1b[0m"
IGNORE = IGNORE_INDEX
# How preference/RL columns are shown: (color, what the column is to the trainer).
TEXT_COLUMNS = {
    "prompt": (DIM, "what the model is given"),
    "chosen": (GREEN, "preferred completion"),
    "rejected": (RED, "dispreferred completion"),
    "completion": (GREEN, "completion"),
}


def render_row(ids: list[int], labels: list[int], tokenizer: Any, color: bool) -> str:
    """Trained spans bold green and masked spans dim; without color, trained spans are wrapped in ⟦…⟧."""
    spans: list[tuple[bool, list[int]]] = []
    for t, label in zip(ids, labels):
        trained = label != IGNORE
        if spans and spans[-1][0] == trained:
            spans[-1][1].append(t)
        else:
            spans.append((trained, [t]))
    out = []
    for trained, toks in spans:
        text = tokenizer.decode(toks)
        if color:
            out.append(f"{BOLD}{GREEN}{text}{RESET}" if trained else f"{DIM}{text}{RESET}")
        else:
            out.append(f"⟦{text}⟧" if trained else text)
    return "".join(out)


def render_text_row(row: dict[str, Any], color: bool) -> str:
    """A preference/RL row: each text column under its name (prompt dim, chosen green, rejected red), then the
    other columns (KTO's label, GRPO's reward inputs) as `name: value`."""
    out = []
    for name, value in row.items():
        if name in TEXT_COLUMNS and isinstance(value, str):
            style, what = TEXT_COLUMNS[name]
            head = f"{BOLD}{name}{RESET} ({what}):" if color else f"{name} ({what}):"
            out.append(f"{head}\n{style}{value}{RESET}" if color else f"{head}\n{value}")
        else:
            out.append(f"{name}: {json.dumps(value, ensure_ascii=False, default=str)}")
    return "\n".join(out)


def split_files(prepared: Path, split: str) -> list[Path]:
    """The Arrow shards of one split of a prepared artifact, in row order (`save_to_disk` names them
    data-00000-of-0000N.arrow); none when the split was not written (val_set_size 0)."""
    return sorted((Path(prepared) / "data" / split).glob("*.arrow"))


def read_rows(prepared: Path, split: str, n: int) -> tuple[list[dict[str, Any]], int]:
    """The first `n` rows of a split (as Python values) and the split's row count, reading only the record
    batches those rows are in (the count comes from the batch headers of a memory map: no row data is copied)."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    total = 0
    for path in split_files(prepared, split):
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                if len(rows) < n:
                    rows.extend(batch.slice(0, n - len(rows)).to_pylist())
                total += batch.num_rows
    return rows, total


class FastDecoder:
    """`decode(ids)` straight from `tokenizer.json`, with special tokens kept (as `tokenizer.decode(ids)`)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def decoder_for(recipe: Any) -> Any:
    """Something with `decode(ids)` for the recipe's tokenizer; the fast path when the tokenizer folder allows."""
    from newt import models
    from newt.masking.boundaries import text_tokenizer

    name = recipe.tokenizer_config or recipe.base_model
    folder = models.local_snapshot(name)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    # transformers cleans up spaces after decoding when the tokenizer asks for it: then only it decodes alike.
    if (folder / "tokenizer.json").is_file() and not config.get("clean_up_tokenization_spaces"):
        return FastDecoder(folder / "tokenizer.json")
    return text_tokenizer(models.load_tokenizer(name, trust_remote_code=recipe.trust_remote_code))


def prepared_artifact(recipe: Any, store: Any, log: Callable[[str], None]) -> Path:
    """The committed `prepared` folder for the recipe's current key, building `dataset` and `prepared` on a miss."""
    from newt.pipeline import plan, run_stage

    keys = plan(recipe, ("prepared",))
    info = keys["prepared"]
    if not store.lookup(info.stage, info.key).hit:
        for stage in ("dataset", "prepared"):  # cache hits when built; otherwise built (and kept) now
            outcome = run_stage(recipe, stage, store, keys=keys, log=log)
            log(f"{stage}: {outcome.cache} {outcome.key}")
    else:
        log(f"prepared: hit {info.key}")
    return store.local_path("prepared", info.key)


def preview(recipe: Any, store: Any, *, rows: int = 3, split: str = "train", color: bool = False,
            out: TextIO | None = None, log: Callable[[str], None] | None = None) -> int:
    """Print the first `rows` rows of the split; SFT rows with trained tokens marked, RL rows column by column."""
    out = out or sys.stdout
    log = log or (lambda message: print(message, file=sys.stderr))
    prepared = prepared_artifact(recipe, store, log)
    shown, total = read_rows(prepared, split, rows)
    sft = not shown or "labels" in shown[0]
    if sft:
        legend = f"{BOLD}{GREEN}trained{RESET} · {DIM}masked (label -100){RESET}" if color else \
            "⟦trained⟧ · masked (label -100)"
    else:
        legend = f"rl: {recipe.rl} rows, text as the trainer receives it"
    print(f"recipe {recipe.name}, split {split}: {total} rows; legend: {legend}", file=out)
    decoder = decoder_for(recipe) if sft and shown else None
    for r, row in enumerate(shown):
        if sft:
            ids, labels = list(row["input_ids"]), list(row["labels"])
            supervised = sum(1 for x in labels if x != IGNORE)
            print(f"\n── row {r}: {len(ids)} tokens, {supervised} trained " + "─" * 20, file=out)
            print(render_row(ids, labels, decoder, color), file=out)
        else:
            print(f"\n── row {r} " + "─" * 20, file=out)
            print(render_text_row(row, color), file=out)
    return 0
