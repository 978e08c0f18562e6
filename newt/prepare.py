"""The `prepared` stage: conversations → chat template → token ids + loss labels → train/validation split.

Each source keeps its own masking knobs (`datasets[i].roles_to_train` / `train_on_eos` override the recipe's).
Rendering and masking are `newt.masking.Masker`'s job: one render per conversation, one batched tokenizer call,
then the role-boundary scanner. The artifact is a `datasets` folder (`data/`, loads with `load_from_disk`) plus
`masking.json`, the report the UI shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from newt.config import DatasetSpec, Recipe
from newt.pipeline import StageRun

IGNORE = -100
CHUNK = 1000


class PrepareError(ValueError):
    pass


def conversations_of(rows: list[dict[str, Any]], spec: DatasetSpec, key_path: str, offset: int = 0) -> list[list[dict]]:
    """Rows of a `chat_template` dataset → OpenAI-style message lists, with errors naming the row and key."""
    role_key = spec.message_property_mappings.get("role", "role")
    content_key = spec.message_property_mappings.get("content", "content")
    out = []
    for n, row in enumerate(rows):
        where = f"{key_path} ({spec.path}) row {offset + n}"
        messages = row.get(spec.field_messages)
        if not isinstance(messages, list) or not messages:
            raise PrepareError(
                f"{where}: expected a non-empty list of messages in column {spec.field_messages!r}, got "
                f"{type(messages).__name__}; set {key_path}.field_messages to the column that holds the messages "
                f"(columns: {', '.join(row)})"
            )
        conv = []
        for m, message in enumerate(messages):
            if not isinstance(message, dict) or role_key not in message or content_key not in message:
                keys = ", ".join(message) if isinstance(message, dict) else type(message).__name__
                raise PrepareError(
                    f"{where}, message {m}: expected keys {role_key!r} and {content_key!r}, found {keys}; set "
                    f"{key_path}.message_property_mappings (e.g. {{role: from, content: value}} for ShareGPT)"
                )
            conv.append({"role": str(message[role_key]), "content": message[content_key]})
        out.append(conv)
    return out


def masker_for(recipe: Recipe, spec: DatasetSpec, tokenizer: Any, template: str):
    from newt.masking import Masker

    return Masker(
        tokenizer,
        chat_template=template,
        roles_to_train=tuple(spec.roles_to_train or recipe.roles_to_train),
        train_on_eos=spec.train_on_eos or recipe.train_on_eos,
        train_on_inputs=recipe.train_on_inputs,
        role_boundaries=[b.model_dump() for b in recipe.role_boundaries] or None,
    )


def fit_length(ids: list[int], labels: list[int], recipe: Recipe) -> tuple[list[int], list[int]] | None:
    """Apply `sequence_len` and `excess_length_strategy`; None means the row is dropped."""
    if len(ids) <= recipe.sequence_len:
        return ids, labels
    if recipe.excess_length_strategy == "drop":
        return None
    return ids[: recipe.sequence_len], labels[: recipe.sequence_len]


def build(run: StageRun) -> dict[str, Any]:
    import datasets

    from newt import models, templates
    from newt.data import source_dir

    recipe = run.recipe
    tokenizer = models.load_tokenizer(recipe.tokenizer_config or recipe.base_model,
                                      trust_remote_code=recipe.trust_remote_code)
    template = templates.template_for(recipe, tokenizer)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "messages": [], "source": []}
    counts = {"rows_in": 0, "too_long": 0, "truncated": 0, "zero_supervision": 0}
    for i, spec in enumerate(recipe.datasets):
        key_path = f"datasets[{i}]"
        masker = masker_for(recipe, spec, tokenizer, template)
        raw = datasets.load_from_disk(str(source_dir(run.upstream["dataset"], i)))
        for start in range(0, len(raw), CHUNK):
            rows = raw[start : start + CHUNK]
            rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
            convs = conversations_of(rows, spec, key_path, offset=start)
            batch = masker(convs)
            for conv, ids, labels in zip(convs, batch["input_ids"], batch["labels"]):
                counts["rows_in"] += 1
                fitted = fit_length(list(ids), list(labels), recipe)
                if fitted is None:
                    counts["too_long"] += 1
                    continue
                counts["truncated"] += len(fitted[0]) < len(ids)
                if all(x == IGNORE for x in fitted[1]):
                    # A row with nothing to learn only dilutes the batch; count it, never train on it.
                    counts["zero_supervision"] += 1
                    continue
                columns["input_ids"].append(fitted[0])
                columns["labels"].append(fitted[1])
                columns["messages"].append(json.dumps(conv, ensure_ascii=False))
                columns["source"].append(i)
        run.log(f"prepared: {key_path} done ({counts['rows_in']} rows so far)")
    if not columns["input_ids"]:
        raise PrepareError(
            f"prepared: no row is left to train on ({counts}); check sequence_len, excess_length_strategy and "
            f"roles_to_train"
        )
    ds = datasets.Dataset.from_dict(columns).shuffle(seed=recipe.seed)
    n_val = held_out_count(len(ds), recipe.val_set_size)
    if n_val >= len(ds):
        raise PrepareError(f"val_set_size {recipe.val_set_size} leaves no training rows out of {len(ds)}; lower it")
    splits = datasets.DatasetDict({"train": ds.select(range(n_val, len(ds))), "validation": ds.select(range(n_val))})
    splits.save_to_disk(str(Path(run.workdir) / "data"))

    tokens = sum(len(x) for x in columns["input_ids"])
    supervised = sum(sum(1 for t in row if t != IGNORE) for row in columns["labels"])
    report = {"counts": counts, "tokens": tokens, "supervised_tokens": supervised}
    report.update(mask_report(columns, tokenizer, recipe, template))
    (Path(run.workdir) / "masking.json").write_text(json.dumps(report, indent=2))
    return {
        "rows_train": len(splits["train"]),
        "rows_validation": len(splits["validation"]),
        "tokens": tokens,
        "supervised_tokens": supervised,
        **{f"rows_{k}": v for k, v in counts.items()},
        **{k: v for k, v in report.items() if k in ("mask_preview", "audit")},
    }


def held_out_count(n: int, val_set_size: float) -> int:
    if val_set_size <= 0:
        return 0
    return int(val_set_size) if val_set_size >= 1 else max(1, int(round(n * val_set_size)))


def mask_report(columns: dict[str, list], tokenizer: Any, recipe: Recipe, template: str) -> dict[str, Any]:
    """Preview of the first rows; extended by the masking engine's audit when available."""
    from newt import masking

    out: dict[str, Any] = {}
    preview = getattr(masking, "mask_preview_markdown", None)
    if preview is not None:
        out["mask_preview"] = preview(columns["input_ids"], columns["labels"], tokenizer, rows=3)
    return out


def load_prepared(path: Path, split: str):
    import datasets

    return datasets.load_from_disk(str(Path(path) / "data"))[split]
