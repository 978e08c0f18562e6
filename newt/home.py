"""newt's local folders. A module of its own (no imports beyond the standard library), so that everything that
keeps files locally (digests, the store's remote-root copies, built-in models) uses one definition without pulling in
what the others import."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """newt's local cache for built-in models and file digests (NEWT_CACHE_DIR, default ~/.cache/newt)."""
    return Path(os.environ.get("NEWT_CACHE_DIR") or Path.home() / ".cache" / "newt")
