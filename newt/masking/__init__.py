"""Loss masking: one role-boundary scanner for text and multimodal rows (see docs/masking.md)."""

from newt.masking.audit import audit, audit_problems
from newt.masking.boundaries import detect_family, media_ids, validate_role_boundaries
from newt.masking.masker import Masker, boundaries_for, render_and_mask
from newt.masking.preview import audit_markdown, mask_preview_markdown
from newt.masking.scanner import (
    IGNORE_INDEX,
    MaskingError,
    RoleBoundary,
    build_labels,
    build_labels_batch,
    known_roles,
)

__all__ = [
    "IGNORE_INDEX",
    "Masker",
    "MaskingError",
    "RoleBoundary",
    "audit",
    "audit_markdown",
    "audit_problems",
    "boundaries_for",
    "build_labels",
    "build_labels_batch",
    "detect_family",
    "known_roles",
    "mask_preview_markdown",
    "media_ids",
    "render_and_mask",
    "validate_role_boundaries",
]
