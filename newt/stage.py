"""What a stage builder is given (`StageRun`) and the seams it calls: one module that every builder and the
pipeline import, so that no builder imports the pipeline that calls it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newt.config import Recipe

Launcher = Callable[[list[str], dict[str, str]], None]
Log = Callable[[str], None]


@dataclass
class StageRun:
    """What a stage builder gets: its recipe, key, work folder, upstream artifact folders and the seams."""

    recipe: Recipe
    stage: str
    key: str
    workdir: Path
    upstream: dict[str, Path]
    launcher: Launcher | None = None
    log: Log = print
    extra: dict[str, Any] = field(default_factory=dict)
