"""Hugging Face hub dataset names: the commit a name points at, and loading it.

The commit sha is the content version: the hub answers it without downloading data. Offline
(HF_HUB_OFFLINE=1 or no network) the revision already in the local hub cache is used, if any.
"""

from __future__ import annotations

import os
from typing import Any

from newt.sources.errors import SourceError

_TIMEOUT_S = 10.0


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a ref (default "main") points at in the local hub cache, or None."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    ref = revision or "main"
    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return None
    for repo in cache.repos:
        if repo.repo_type == "dataset" and repo.repo_id == repo_id:
            if ref in repo.refs:
                return repo.refs[ref].commit_hash
            for rev in repo.revisions:  # a pinned full sha is its own ref
                if rev.commit_hash == ref:
                    return ref
    return None


def hub_commit(repo_id: str, revision: str | None = None, key_path: str = "dataset") -> str:
    """The commit sha of hub dataset `repo_id` at `revision` (default: main)."""
    from huggingface_hub import HfApi, is_offline_mode
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    local = os.path.abspath(repo_id)
    if not is_offline_mode():
        try:
            return HfApi().dataset_info(repo_id, revision=revision, timeout=_TIMEOUT_S).sha
        except GatedRepoError:
            raise SourceError(
                f"{key_path}.path",
                f"hub dataset {repo_id!r} is gated",
                f"accept its terms on https://huggingface.co/datasets/{repo_id} and export HF_TOKEN",
            ) from None
        except RevisionNotFoundError:
            raise SourceError(
                f"{key_path}.revision",
                f"hub dataset {repo_id!r} has no revision {revision!r}",
                "use a branch, tag or commit sha that exists (default: main)",
            ) from None
        except RepositoryNotFoundError:
            raise SourceError(
                f"{key_path}.path",
                f"{repo_id!r} is neither a local file or folder ({local}) nor a hub dataset you can access",
                f"check {key_path}.path; for a private hub dataset export HF_TOKEN",
            ) from None
        except Exception:  # no network: fall back to the local hub cache below
            pass
    sha = _cached_commit(repo_id, revision)
    if sha is None:
        raise SourceError(
            f"{key_path}.path",
            f"{repo_id!r} is not a local file or folder ({local}), and as a hub dataset it cannot be"
            " reached (offline or no network) and is not in the local hub cache",
            "fix the path if you meant a local file; otherwise run with network access, or download a copy"
            f" (hf download --repo-type dataset {repo_id} --local-dir DIR) and set {key_path}.path to DIR",
        )
    return sha


def load_hub(repo_id: str, spec: Any, revision: str | None, cache_dir: str | None, key_path: str):
    """`datasets.load_dataset(name, name=config, split=...)` for a hub name or a hub-layout local folder."""
    import datasets

    try:
        return datasets.load_dataset(
            repo_id,
            name=getattr(spec, "name", None),
            split=spec.split,
            data_files=getattr(spec, "data_files", None),
            revision=revision,
            cache_dir=cache_dir,
        )
    except ValueError as exc:
        if "config" in str(exc).lower() or "split" in str(exc).lower():
            raise SourceError(
                f"{key_path}.name" if "config" in str(exc).lower() else f"{key_path}.split",
                f"{repo_id}: {exc}",
                f"set {key_path}.name / {key_path}.split to one the dataset has",
            ) from exc
        raise
    except (ConnectionError, FileNotFoundError) as exc:
        raise SourceError(
            f"{key_path}.path",
            f"{repo_id!r} is not a local file or folder ({os.path.abspath(repo_id)}), and loading it as a hub"
            f" dataset failed ({type(exc).__name__}: {exc})",
            "fix the path if you meant a local file; otherwise check the hub name and network access, or"
            f" point {key_path}.path at a local copy",
        ) from exc
