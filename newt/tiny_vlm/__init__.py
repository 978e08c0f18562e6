"""Tiny vision-language (and audio-language) models, one module per family: the real transformers model and
processor classes at tiny sizes, built offline and deterministically, with the family's chat template and marker
tokens. `base_model: builtin:tiny-<family>` builds one (see `newt.tiny.ensure_builtin`).

A family module defines `build(out: Path)` and `IMAGE_SIZE` (pixels of the square test image it expects) or
`AUDIO_SECONDS`; the registry is every such module in this package.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# Bump a family's build output version here when its builder changes (part of the built folder's name).
BUILDER_VERSION = "2"


def families() -> dict[str, ModuleType]:
    """{family name: its module}, for every module of this package that defines `build`."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "build", None)):
            out[info.name] = module
    return out


def names() -> tuple[str, ...]:
    """The built-in names (`tiny-<family>`) of the families, sorted."""
    return tuple(sorted(f"tiny-{name}" for name in families()))
