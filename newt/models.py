"""Where base models and tokenizers come from, and the content digests that key them.

`base_model` is a hub name, a local folder, or `builtin:<name>` (built offline by `newt.tiny`). Everything goes
through the ordinary `from_pretrained` path; the built-in is just a local folder made on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from newt.digest import dir_digest
from newt.tiny import ensure_builtin

# Files that make up a tokenizer; a change to any of them changes the `prepared` key, a weights change does not.
# generation_config.json: its stop tokens decide whether a turn closed by the next role's marker trains it (GLM-4,
# newt.masking.boundaries.stop_ids).
TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "tekken.json",
    "preprocessor_config.json", "processor_config.json", "generation_config.json",
}
MISTRAL_FILE = "tekken.json"  # mistral-common's tokenizer file
AGNOSTIC = "agnostic"  # mistral-common's validation mode that accepts training rows and prompts alike


class ModelNotFound(FileNotFoundError):
    pass


def resolve(name: str) -> str:
    """A local folder for `name` when one exists (built-in or on disk), else the hub name unchanged."""
    if name.startswith("builtin:"):
        return str(ensure_builtin(name.split(":", 1)[1]))
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not any((path / f).is_file() for f in ("config.json", "tokenizer_config.json", MISTRAL_FILE)):
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
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    # One line each: the hub being unreachable is the usual case (offline machines, CI), named as such with how to
    # provide a local copy; a name the hub does not know is a different fix.
    local_copy = (f"download the model and point base_model at its folder (where the hub is reachable: hf "
                  f"download {resolved} --local-dir DIR), or use builtin:tiny-llama")
    not_a_name = (f"base_model {name!r} is neither a local folder (none at {Path(name).expanduser().absolute()}) nor "
                  "a valid hub model name; fix the name, or point base_model at a model folder")
    try:  # a path-like name that does not exist is no hub name either: say so, not "the hub cannot be reached"
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(resolved)
    except HFValidationError:
        raise ModelNotFound(not_a_name) from None
    if is_offline_mode():
        raise ModelNotFound(f"base_model {name!r}: the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set) "
                            f"and the model is not in the local hub cache; {local_copy}")
    try:
        return Path(snapshot_download(resolved))
    except GatedRepoError:
        raise ModelNotFound(f"base_model {name!r} is a gated hub model; accept its terms on "
                            f"https://huggingface.co/{resolved} and export HF_TOKEN, or {local_copy}") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"base_model {name!r} is neither a local folder nor a hub model you can access; fix "
                            "the name (or export HF_TOKEN for a private model)") from None
    except Exception as exc:
        raise ModelNotFound(f"base_model {name!r}: the Hugging Face hub cannot be reached ({type(exc).__name__}) "
                            f"and the model is not in the local hub cache; {local_copy}") from None


def tokenizer_digest(name: str) -> dict[str, str]:
    return dir_digest(local_snapshot(name), TOKENIZER_FILES)


def weights_digest(name: str) -> dict[str, str]:
    return dir_digest(local_snapshot(name))


def tokenizer_kwargs(folder: str | Path) -> dict[str, Any]:
    """How transformers loads the tokenizer files of a folder: one holding only mistral-common's tekken.json
    (Voxtral; newt's adapter folders of it, where no config.json names the model type) loads with mistral-common,
    in agnostic mode: mistral-common validates requests for serving by default (the last message must be the
    user's), and newt renders training rows, which end with the answer, as well as prompts."""
    folder = Path(folder)
    if (folder / MISTRAL_FILE).is_file() and not (folder / "tokenizer_config.json").is_file():
        return {"mistral_format": True, "mode": AGNOSTIC}
    return {}


def _from_pretrained(cls: Any, folder: str, trust_remote_code: bool) -> Any:
    """`cls.from_pretrained(folder)`; a mistral-common tokenizer transformers chose by itself (a folder with both
    tekken.json and tokenizer_config.json) is loaded again in agnostic mode (`tokenizer_kwargs`)."""
    from newt.masking.boundaries import text_tokenizer
    from newt.templates import renders_in_code

    loaded = cls.from_pretrained(folder, trust_remote_code=trust_remote_code, **tokenizer_kwargs(folder))
    mode = getattr(text_tokenizer(loaded), "mode", None)
    if renders_in_code(loaded) and getattr(mode, "name", mode) != AGNOSTIC:
        loaded = cls.from_pretrained(folder, trust_remote_code=trust_remote_code, mode=AGNOSTIC)
    return loaded


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, str(local_snapshot(name)), trust_remote_code)


def load_processor(name: str, processor_type: str = "AutoProcessor", *, trust_remote_code: bool = False) -> Any:
    """A multimodal processor (tokenizer + image processor or audio feature extractor). `processor_type` is
    `AutoProcessor` or the name of a transformers processor class (Axolotl's key)."""
    import transformers

    cls = getattr(transformers, processor_type, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        import difflib

        names = [n for n in dir(transformers) if n.endswith("Processor")]
        hint = difflib.get_close_matches(processor_type, ["AutoProcessor", *names], n=1)
        raise ValueError(f"processor_type: {processor_type!r} is not a transformers processor class"
                         + (f"; did you mean {hint[0]!r}?" if hint else "; use AutoProcessor"))
    processor = _from_pretrained(cls, str(local_snapshot(name)), trust_remote_code)
    media = ("image_processor", "feature_extractor")
    if not hasattr(processor, "tokenizer") or not any(hasattr(processor, m) for m in media):
        raise ValueError(f"processor_type: {processor_type} loaded a {type(processor).__name__} for {name!r}, which "
                         f"has no tokenizer + image processor (or audio feature extractor) pair; this model is not a "
                         f"vision-language model, so remove processor_type")
    return processor


def auto_model_class(name: str, *, trust_remote_code: bool = False) -> Any:
    """AutoModelForCausalLM, or AutoModelForMultimodalLM for a vision- or audio-language model (LLaVA, Qwen2-VL,
    Voxtral, ...) whose configuration has no causal-LM class. (transformers' multimodal-LM mapping holds every
    image-text-to-text architecture and the audio-text ones.)"""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMultimodalLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
    )

    folder = local_snapshot(name)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):  # a reward model (rl: reward)
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification
    model_type = config.model_type
    # A folder with a processor is a vision-language checkpoint even where the causal-LM mapping also names the
    # model type (Mllama's maps to the text-only MllamaForCausalLM, which would drop the vision tower).
    multimodal = any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
    if model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES and (
        multimodal or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return AutoModelForMultimodalLM
    return AutoModelForCausalLM


def load_model(name: str, *, trust_remote_code: bool = False, dtype: Any = None, **kwargs: Any) -> Any:
    return auto_model_class(name, trust_remote_code=trust_remote_code).from_pretrained(
        str(local_snapshot(name)), trust_remote_code=trust_remote_code, dtype=dtype or "auto", use_safetensors=True,
        **kwargs,
    )


def load_scorer(name: str, *, dtype: Any = None, trust_remote_code: bool = False, seed: int | None = None,
                tokenizer: str | None = None) -> Any:
    """`name` as a one-output sequence classifier; a causal LM folder gets a fresh head (seeded when `seed` is
    given). Its pad token id comes from `tokenizer` (default: `name`'s own), since the head reads the last non-pad
    token."""
    from transformers import AutoModelForSequenceClassification, set_seed

    if seed is not None:
        set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(local_snapshot(name)), num_labels=1, trust_remote_code=trust_remote_code, dtype=dtype or "auto",
        use_safetensors=True,
    )
    tok = load_tokenizer(tokenizer or name, trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model
