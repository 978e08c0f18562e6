"""The recipe schema: one typed model, strict, with the stages each field affects.

Key names follow Axolotl where Axolotl has the concept, so an Axolotl user reads a newt recipe without a glossary.
Every field carries `stages` in its schema extra: the list of pipeline stages whose output it determines. The cache
derives each stage's key from exactly those fields (`stage_fields`), so the list is never kept by hand elsewhere.
A field tagged with no stage changes behaviour that is not part of an artifact (logging, gates).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from newt import STAGES


def knob(default: Any, description: str, *stages: str, **kwargs: Any) -> Any:
    """A schema field with its one-line description and the stages whose output it determines."""
    unknown = set(stages) - set(STAGES)
    assert not unknown, f"unknown stage tags {unknown}"
    return Field(default, description=description, json_schema_extra={"stages": list(stages)}, **kwargs)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


TrainOnEos = Literal["turn", "all", "last", "none"]


class RoleBoundarySpec(Strict):
    """One role's turn markers, as literal strings the tokenizer encodes (masking engine override)."""

    role: str = knob(..., "Role name this boundary delimits (as used in `roles_to_train`).", "prepared")
    start: str = knob(..., "Literal text that opens a turn of this role.", "prepared")
    end: str | None = knob(
        "eos_token",
        "Literal text that closes the turn; `eos_token` means the tokenizer's EOS; null runs to the end of the row.",
        "prepared",
    )
    include_start: bool = knob(False, "Train the start marker too.", "prepared")
    include_end: bool = knob(True, "Whether the end marker may be trained (as `train_on_eos` decides).", "prepared")


class DatasetSpec(Strict):
    """One data source and how its rows become conversations."""

    path: str = knob(..., "Local file/folder, fsspec URL (s3://, gs://, az://, https://) or hub dataset name.", "dataset")
    type: Literal["chat_template"] = knob(
        "chat_template", "Row format: `chat_template` = a list of messages per row.", "prepared"
    )
    split: str = knob("train", "Split to read.", "dataset")
    data_files: str | list[str] | None = knob(None, "Files inside `path` to read (glob or list).", "dataset")
    name: str | None = knob(None, "Hub dataset configuration name.", "dataset")
    ds_type: Literal["json", "jsonl", "parquet", "csv", "arrow"] | None = knob(
        None, "File format when the extension does not say it.", "dataset"
    )
    storage_options: dict[str, Any] = knob(
        {},
        "fsspec options (endpoint_url, key, secret, anon, ...); use ${env:NAME} for secrets. Not part of any key: "
        "the data's content version is.",
    )
    field_messages: str = knob("messages", "Column holding the list of messages.", "prepared")
    message_property_mappings: dict[str, str] = knob(
        {"role": "role", "content": "content"},
        "Which keys of a message hold its role and content, e.g. {role: from, content: value} for ShareGPT.",
        "prepared",
    )
    roles_to_train: list[str] | None = knob(None, "Overrides the recipe's `roles_to_train` for this dataset.", "prepared")
    train_on_eos: TrainOnEos | None = knob(None, "Overrides the recipe's `train_on_eos` for this dataset.", "prepared")


class MergeConfig(Strict):
    dtype: Literal["float32", "bfloat16", "float16"] = knob(
        "float32", "Dtype the merged weights are saved in.", "merged"
    )


class QuantizeConfig(Strict):
    method: Literal["int8_weight_only", "int4_weight_only", "bnb_8bit", "bnb_4bit", "gguf_f16", "gguf_q8_0"] = knob(
        "int8_weight_only", "Quantization/export method applied to the merged model.", "quantized"
    )


EVAL_METRICS = {"exact_match": "min", "loss": "max", "perplexity": "max"}


class EvalConfig(Strict):
    max_samples: int = knob(200, "Held-out rows scored (the first N of the validation split).", "evaluation", ge=1)
    max_new_tokens: int = knob(32, "Generation budget per held-out prompt.", "evaluation", ge=1)
    models: list[Literal["base", "merged", "quantized"]] = knob(
        ["base", "merged", "quantized"], "Model variants to evaluate.", "evaluation", min_length=1
    )
    thresholds: dict[str, float] = knob(
        {},
        "Blocking gates on the fine-tuned variants: exact_match is a minimum, loss and perplexity are maxima. "
        "Checked on every materialization; not part of the key.",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in EVAL_METRICS:
                hint = difflib.get_close_matches(name, EVAL_METRICS, n=1)
                raise ValueError(
                    f"unknown metric {name!r}; known metrics: {', '.join(EVAL_METRICS)}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
        return value


class Recipe(Strict):
    """A fine-tuning recipe: one YAML file, one asset group."""

    base_model: str = knob(
        ..., "Hub name, local path, or `builtin:tiny-llama` (built offline, deterministic).", "prepared", "trained"
    )
    tokenizer_config: str | None = knob(None, "Tokenizer to use instead of the base model's (hub name or path).", "prepared")
    trust_remote_code: bool = knob(False, "Allow code from the model repo to run. Keep false unless you trust it.",
                                   "prepared", "trained")
    datasets: list[DatasetSpec] = knob(..., "Training data sources, merged in order.", "dataset", "prepared",
                                       min_length=1)
    chat_template: str = knob(
        "tokenizer_default",
        "`tokenizer_default` (the tokenizer's own), `jinja` (use chat_template_jinja), or a template name shipped "
        "with TRL (e.g. `qwen2_5`, `llama3`).",
        "prepared",
    )
    chat_template_jinja: str | None = knob(None, "Jinja template text, or a path to a .jinja file.", "prepared")
    train_on_inputs: bool = knob(False, "Train on every token except pad/media, not just the trained roles.", "prepared")
    roles_to_train: list[str] = knob(["assistant"], "Roles whose content is trained.", "prepared", min_length=1)
    train_on_eos: TrainOnEos = knob("turn", "Which turn end markers are trained: turn, all, last or none.", "prepared")
    role_boundaries: list[RoleBoundarySpec] = knob(
        [], "Replaces the built-in/derived role markers wholesale when non-empty.", "prepared"
    )
    sequence_len: int = knob(2048, "Maximum tokens per row.", "prepared", ge=8)
    excess_length_strategy: Literal["truncate", "drop"] = knob(
        "truncate", "Rows longer than sequence_len: cut to length, or drop the row.", "prepared"
    )
    val_set_size: float = knob(
        0.0, "Held-out share of rows (< 1) or row count (>= 1) for evaluation.", "prepared", ge=0
    )
    seed: int = knob(42, "Seed for the split, shuffling and training.", "prepared", "trained")

    adapter: Literal["lora"] | None = knob("lora", "`lora`, or null for a full fine-tune.", "trained")
    lora_r: int = knob(8, "LoRA rank.", "trained", ge=1)
    lora_alpha: int = knob(16, "LoRA scaling numerator.", "trained", ge=1)
    lora_dropout: float = knob(0.0, "Dropout on the LoRA path.", "trained", ge=0, le=1)
    lora_target_modules: list[str] | Literal["all-linear"] = knob(
        "all-linear", "Module names LoRA wraps, or `all-linear`.", "trained"
    )
    lora_modules_to_save: list[str] = knob(
        [], "Modules trained in full next to the adapter (e.g. embed_tokens, lm_head).", "trained"
    )
    micro_batch_size: int = knob(1, "Rows per device per step.", "trained", ge=1)
    gradient_accumulation_steps: int = knob(1, "Micro-batches per optimizer step.", "trained", ge=1)
    num_epochs: float = knob(1.0, "Passes over the training split (ignored when max_steps is set).", "trained", gt=0)
    max_steps: int | None = knob(None, "Optimizer steps; overrides num_epochs.", "trained", ge=1)
    learning_rate: float = knob(2e-4, "Peak learning rate.", "trained", gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = knob(
        "cosine", "Learning-rate schedule.", "trained"
    )
    warmup_steps: int = knob(0, "Linear warm-up steps.", "trained", ge=0)
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = knob(
        "adamw_torch", "Optimizer.", "trained"
    )
    weight_decay: float = knob(0.0, "Decoupled weight decay.", "trained", ge=0)
    logging_steps: int = knob(10, "Steps between metric reports to the run log (not part of any key).", ge=1)

    merge: MergeConfig = knob(MergeConfig(), "Merge stage settings.", "merged")
    quantize: QuantizeConfig = knob(QuantizeConfig(), "Quantize stage settings.", "quantized")
    eval: EvalConfig = knob(EvalConfig(), "Evaluation stage settings and gates.", "evaluation")

    _name: str = PrivateAttr("recipe")
    _source: str | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str | None:
        return self._source

    @model_validator(mode="after")
    def _cross_field(self) -> Recipe:
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            raise ValueError("chat_template is 'jinja' but chat_template_jinja is empty; set chat_template_jinja")
        return self


class RecipeError(ValueError):
    """Every problem of one recipe file, each naming its key path, the bad value, what is allowed and the fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        plural = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {plural}:\n" + "\n".join(f"  - {p}" for p in problems))


# --- loading -------------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and name a recipe file. The file stem becomes the asset group name."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, [f"file not found; expected a YAML recipe at {source}"])
    name = path.stem
    if not _NAME_RE.match(name):
        raise RecipeError(
            source, [f"file name {name!r} is not a valid asset group name; use letters, digits and _ only"]
        )
    return parse_recipe(path.read_text(encoding="utf-8"), source=source, name=name)


def parse_recipe(text: str, *, source: str = "<recipe>", name: str = "recipe") -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"YAML syntax error at {where}{problem}; fix the YAML"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [f"expected a mapping of recipe keys at the top level, got {type(data).__name__}"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [_describe(err) for err in exc.errors()]) from None
    recipe._name = name
    recipe._source = source
    return recipe


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc` (for "did you mean" on unknown keys)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _inner_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    where = key_path(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = list(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        tip = f"did you mean {hint[0]!r}?" if hint else "remove it"
        return f"{where}: unknown key; {tip} (allowed keys here: {', '.join(known)})"
    if kind == "missing":
        owner = _model_at(loc[:-1])
        desc = owner.model_fields[loc[-1]].description if owner and loc[-1] in owner.model_fields else ""
        return f"{where}: required key is missing; add it ({desc})"
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    text = f"{where}: got {shown}; {msg[0].lower() + msg[1:]}"
    expected = (err.get("ctx") or {}).get("expected")
    if kind == "literal_error" and expected and isinstance(value, str):
        options = re.findall(r"'([^']*)'", expected)
        hint = difflib.get_close_matches(value, options, n=1)
        if hint:
            text += f"; did you mean {hint[0]!r}?"
    return text


# --- stage tags --------------------------------------------------------------------------------------------


def field_stages(model: type[BaseModel], name: str) -> list[str]:
    extra = model.model_fields[name].json_schema_extra
    return list(extra.get("stages", [])) if isinstance(extra, dict) else []


def stage_fields(obj: BaseModel, stage: str) -> dict[str, Any]:
    """The recipe values that determine `stage`'s output, derived from the schema's stage tags.

    A nested model (or list of models) contributes only its own tagged sub-fields, so `datasets[].path` keys the
    `dataset` stage while `datasets[].field_messages` keys `prepared`.
    """
    out: dict[str, Any] = {}
    for name in type(obj).model_fields:
        if stage not in field_stages(type(obj), name):
            continue
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            out[name] = stage_fields(value, stage)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [stage_fields(v, stage) for v in value]
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def iter_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, Any, str, list[str]]]:
    """(key path, field info, type text, stages) for every field, nested models expanded (docs generation)."""
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        rows.append((path, info, _type_text(info.annotation), field_stages(model, name)))
        inner = _inner_model(info.annotation)
        if inner is not None:
            sep = "[]." if get_origin(info.annotation) is list else "."
            rows.extend(iter_fields(inner, path + sep))
    return rows


def _type_text(annotation: Any) -> str:
    return re.sub(r"typing\.|newt\.config\.", "", str(annotation)).replace("<class '", "").replace("'>", "")
