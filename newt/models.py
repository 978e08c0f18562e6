"""Where base models and tokenizers come from, and the content digests that key them.

`base_model` is a hub name, a local folder, or `builtin:<name>` (built offline by `newt.tiny`). Everything goes
through the ordinary `from_pretrained` path; the built-in is just a local folder made on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from newt.cache import dir_digest
from newt.tiny import ensure_builtin

# Files that make up a tokenizer; a change to any of them changes the `prepared` key, a weights change does not.
TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "tekken.json",
    "preprocessor_config.json", "processor_config.json",
}


class ModelNotFound(FileNotFoundError):
    pass


def resolve(name: str) -> str:
    """A local folder for `name` when one exists (built-in or on disk), else the hub name unchanged."""
    if name.startswith("builtin:"):
        return str(ensure_builtin(name.split(":", 1)[1]))
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise ModelNotFound(f"base_model {name!r}: folder has no config.json or tokenizer_config.json")
        return str(path.resolve())
    return name


def local_snapshot(name: str) -> Path:
    """The local folder of a model: built-in, local path, or the hub cache (download when online)."""
    resolved = resolve(name)
    if Path(resolved).exists():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(resolved))
    except Exception as exc:
        raise ModelNotFound(
            f"base_model {name!r} is neither a local folder nor a hub model that can be fetched "
            f"({type(exc).__name__}: {exc}). Fix the name, download the model and point base_model at its folder, "
            f"or use builtin:tiny-llama"
        ) from None


def tokenizer_digest(name: str) -> dict[str, str]:
    return dir_digest(local_snapshot(name), TOKENIZER_FILES)


def weights_digest(name: str) -> dict[str, str]:
    return dir_digest(local_snapshot(name))


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_snapshot(name)), trust_remote_code=trust_remote_code)


def load_model(name: str, *, trust_remote_code: bool = False, dtype: Any = None, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(local_snapshot(name)), trust_remote_code=trust_remote_code, dtype=dtype or "auto", use_safetensors=True,
        **kwargs,
    )
