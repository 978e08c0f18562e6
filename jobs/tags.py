"""Run tags of a recipe's job: which recipe, which version of its file, which commit of the code ran.

Computed when the code location loads (a new recipe file or commit reloads it), and set as the job's run tags, so
every run of the job carries them — from the UI, a schedule, a sensor or `newt run`.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from newt.config import Recipe


def run_tags(recipe: Recipe, code_dir: Path | None = None) -> dict[str, str]:
    tags = {"newt/recipe": recipe.name}
    if recipe.source and Path(recipe.source).is_file():
        tags["newt/recipe_sha256"] = hashlib.sha256(Path(recipe.source).read_bytes()).hexdigest()[:16]
    commit = git_commit(code_dir or Path.cwd())
    if commit is not None:
        tags["newt/git_commit"] = commit
    return tags


def git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding `folder` (with `-dirty` when tracked files differ); None outside one."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
