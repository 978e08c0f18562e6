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
# generation_config.json: its stop tokens decide whether a turn closed by the next role's marker trains it (GLM-4,
# newt.masking.boundaries.stop_ids).
TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "tekken.json",
    "preprocessor_config.json", "processor_config.json", "generation_config.json",
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


def load_processor(name: str, processor_type: str = "AutoProcessor", *, trust_remote_code: bool = False) -> Any:
    """A multimodal processor (tokenizer + image processor). `processor_type` is `AutoProcessor` or the name of a
    transformers processor class (Axolotl's key)."""
    import transformers

    cls = getattr(transformers, processor_type, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        import difflib

        names = [n for n in dir(transformers) if n.endswith("Processor")]
        hint = difflib.get_close_matches(processor_type, ["AutoProcessor", *names], n=1)
        raise ValueError(f"processor_type: {processor_type!r} is not a transformers processor class"
                         + (f"; did you mean {hint[0]!r}?" if hint else "; use AutoProcessor"))
    processor = cls.from_pretrained(str(local_snapshot(name)), trust_remote_code=trust_remote_code)
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ValueError(f"processor_type: {processor_type} loaded a {type(processor).__name__} for {name!r}, which "
                         f"has no tokenizer + image processor pair; this model is not a vision-language model, so "
                         f"remove processor_type")
    return processor


def auto_model_class(name: str, *, trust_remote_code: bool = False) -> Any:
    """AutoModelForCausalLM, or AutoModelForImageTextToText for a vision-language model (LLaVA, Qwen2-VL, ...)
    whose configuration has no causal-LM class."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    folder = local_snapshot(name)
    model_type = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code).model_type
    # A folder with a processor is a vision-language checkpoint even where the causal-LM mapping also names the
    # model type (Mllama's maps to the text-only MllamaForCausalLM, which would drop the vision tower).
    multimodal = any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and (
        multimodal or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def load_model(name: str, *, trust_remote_code: bool = False, dtype: Any = None, **kwargs: Any) -> Any:
    return auto_model_class(name, trust_remote_code=trust_remote_code).from_pretrained(
        str(local_snapshot(name)), trust_remote_code=trust_remote_code, dtype=dtype or "auto", use_safetensors=True,
        **kwargs,
    )
