"""`newt validate`: every check that needs no training, so that a recipe that validates fails no later for a
reason it could have named now.

After the schema (newt.config, run by `load_recipe`), `problems(recipe)` checks:

- each local dataset: its files exist and are readable (`newt.sources.locate`), and the first row of the first
  file parses in the declared format and (for supervised fine-tuning) reads as the declared row `type`
  (columns, messages, role names), with the same messages the `prepared` stage would give;
- `chat_template` names a template that exists (and `chat_template_jinja` a file that exists);
- `roles_to_train` (the recipe's and each dataset's) names roles that the data's role mapping, the
  `role_boundaries` or the format know.

Remote and hub datasets are not read here (that needs the network and credentials); `newt plan` asks for their
content versions. Every problem is reported, not the first.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from typing import Any

from newt.config import DatasetSpec, Recipe

# Roles a text format's rows become (newt.formats.segments_as_messages): `roles_to_train` does not apply to them.
TEXT_ROLES = ("input", "output")


def problems(recipe: Recipe) -> list[str]:
    out: list[str] = []
    for i, spec in enumerate(recipe.datasets):
        # Preference and prompt-only rows (rl: dpo, kto, grpo) are read by newt.preference, not by a row `type`.
        out += dataset_problems(spec, f"datasets[{i}]", read_rows=recipe.rl is None)
    out += template_problems(recipe)
    out += role_problems(recipe)
    return out


def template_problems(recipe: Recipe) -> list[str]:
    from newt.templates import TemplateError, explicit_template

    try:
        explicit_template(recipe)
    except TemplateError as exc:
        return [str(exc)]
    return []


def known_roles(recipe: Recipe, spec: DatasetSpec) -> list[str]:
    """Roles a chat dataset's turns can have: the targets of its role mapping plus the declared boundaries."""
    from newt.formats import role_lookup

    if spec.type not in ("chat_template", "alpaca"):
        return list(TEXT_ROLES)
    roles = ["user", "assistant"] if spec.type == "alpaca" else sorted(set(role_lookup(spec).values()))
    return list(dict.fromkeys([*roles, *(b.role for b in recipe.role_boundaries or [])]))


def role_problems(recipe: Recipe) -> list[str]:
    """Each `roles_to_train` entry against the roles of the chat datasets it applies to: a dataset's own list
    against that dataset, the recipe's against every dataset without one (once, not per dataset)."""
    chat = [(i, spec) for i, spec in enumerate(recipe.datasets) if spec.type in ("chat_template", "alpaca")]
    checks = [(f"datasets[{i}].roles_to_train", spec.roles_to_train, known_roles(recipe, spec), f"datasets[{i}]")
              for i, spec in chat if spec.roles_to_train is not None]
    shared = [(i, spec) for i, spec in chat if spec.roles_to_train is None]
    if shared:
        known = list(dict.fromkeys(r for _, spec in shared for r in known_roles(recipe, spec)))
        where = f"datasets[{shared[0][0]}]" if len(shared) == 1 else "the datasets"
        checks.append(("roles_to_train", recipe.roles_to_train, known, where))
    out = []
    for key, roles, known, where in checks:
        for role in roles:
            if role in known:
                continue
            close = difflib.get_close_matches(role, known, n=1)
            out.append(
                f"{key} names {role!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f", a role {where} have no turns of (roles: {', '.join(known)}); fix {key}, map the data's "
                "role name to it in the dataset's roles, or declare it in role_boundaries"
            )
    return out


def dataset_problems(spec: DatasetSpec, key_path: str, read_rows: bool = True) -> list[str]:
    from newt.sources import SourceError, locate

    try:
        found = locate(spec, key_path)
    except SourceError as exc:
        return [str(exc)]
    if found.kind != "local" or not found.files:
        return []  # remote, hub and hub-style folders: read by the dataset stage
    first = found.files[0]
    try:
        row, where = first_row(first.url, found.format)
    except ValueError as exc:
        return [f"{key_path}.path: {exc}"]
    except OSError as exc:
        return [f"{key_path}.path: cannot read {first.url} ({exc.strerror or exc}); fix: check the file and its "
                "permissions"]
    if row is None or not read_rows:
        return []  # an empty file: the dataset stage says whether the dataset as a whole is empty
    return row_problems(row, spec, key_path, where)


def first_row(path: str, fmt: str | None) -> tuple[dict[str, Any] | None, str]:
    """The first row of a local data file in its format, and where it is (for messages); ValueError when it
    does not parse, naming the file and line."""
    if fmt in ("json", "jsonl"):  # `datasets`' json reader takes JSON lines and a JSON array alike
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 16).lstrip()
        if head.startswith("["):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            try:
                rows = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{path} is not valid JSON ({exc}); fix: the file must hold one JSON array of row "
                                 "objects, or one JSON object per line") from None
            return (_mapping(rows[0], f"{path} row 0"), "row 0") if rows else (None, "")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path} line {n} is not valid JSON ({getattr(exc, 'msg', exc)}); fix: fix "
                                     "or delete that line; each line must be one JSON object") from None
                return _mapping(row, f"{path} line {n}"), f"line {n}"
        return None, ""
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            row = next(csv.DictReader(io.StringIO(f.read(1 << 20))), None)
        return row, "row 0"
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path).read_row_group(0) if pq.ParquetFile(path).num_row_groups else None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for a damaged file
            raise ValueError(f"{path} is not a readable parquet file ({exc}); fix: rewrite it, or set ds_type "
                             "if it is another format") from None
        return (table.slice(0, 1).to_pylist()[0], "row 0") if table is not None and table.num_rows else (None, "")
    return None, ""  # arrow shards: read by the dataset stage


def _mapping(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a {type(row).__name__}, not an object of columns; fix: each row must be a "
                         "JSON object such as {\"messages\": [...]}")
    return row


def row_problems(row: dict[str, Any], spec: DatasetSpec, key_path: str, where: str) -> list[str]:
    """The first row read as its declared `type`, with the `prepared` stage's own checks and messages."""
    from newt import formats

    try:
        formats.check_columns(list(row), spec, key_path)
        if spec.type in formats.CHAT_TYPES:
            formats.to_conversation(row, spec, key_path, 0, formats.role_lookup(spec))
        else:
            formats.to_segments(row, spec, key_path, 0)
    except formats.FormatError as exc:
        return [str(exc) if where == "row 0" else f"{exc} (the first row is on {where})"]
    return []
