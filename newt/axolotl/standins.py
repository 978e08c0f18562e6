"""Stand-ins for hub names: plan and run a recipe written for hub models and datasets with local replacements,
without editing it (tests use `builtin:` models and small local files; a user can point at local copies).

    NEWT_STANDINS=standins.yaml newt plan my_axolotl_config.yml

The file maps a name as the recipe spells it (in `base_model`, `tokenizer_config` or `datasets[].path`) to its
replacement. Each replacement is listed in the recipe's notes. Nothing is hard-coded: without the variable a
recipe is read as written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV = "NEWT_STANDINS"


class StandinsError(ValueError):
    """The stand-ins file cannot be used; the recipe parser reports it as a problem of the file named."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


def load_standins() -> dict[str, str]:
    path = os.environ.get(ENV)
    if not path:
        return {}
    import yaml

    file = Path(path).expanduser()
    try:
        table = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StandinsError(str(file), f"{ENV} names a file newt cannot read as YAML ({exc}); fix or unset it") \
            from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise StandinsError(str(file), f"{ENV}: expected a mapping of hub name → replacement (both text)")
    base = file.parent
    # a relative local replacement is relative to the stand-ins file, so the table travels with its data
    return {k: (v if ":" in v or Path(v).is_absolute() or not (base / v).exists() else str(base / v))
            for k, v in table.items()}


def apply_standins(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    table = load_standins()
    if not table:
        return data, []
    data = dict(data)
    notes = []
    for key in ("base_model", "tokenizer_config"):
        if isinstance(data.get(key), str) and data[key] in table:
            notes.append(f"{key}: {data[key]!r} stood in by {table[data[key]]!r} ({ENV})")
            data[key] = table[data[key]]
    if isinstance(data.get("datasets"), list):
        specs = []
        for i, spec in enumerate(data["datasets"]):
            if isinstance(spec, dict) and isinstance(spec.get("path"), str) and spec["path"] in table:
                notes.append(f"datasets[{i}].path: {spec['path']!r} stood in by {table[spec['path']]!r} ({ENV})")
                spec = {**spec, "path": table[spec["path"]]}
                # a hub dataset's config name and file selection do not apply to the local stand-in
                spec = {k: v for k, v in spec.items() if k not in ("name", "data_files")}
            specs.append(spec)
        data["datasets"] = specs
    return data, notes
