"""Axolotl compatibility: an Axolotl YAML is a newt recipe as it stands.

newt's key names follow Axolotl wherever newt has the concept (docs/migrating-from-axolotl.md). Before the schema
validates a file, `translate` reads every Axolotl-only key through the table in `newt.axolotl.keys`: an applied key
is rewritten into newt's keys, a noted key is accepted with a note (`newt validate` prints the notes), a refused key
is one problem of the recipe error naming what to do instead; all problems of a file are reported together.

An empty value (null, false, "", [], {}) asks for nothing and is accepted with a note, for Axolotl's keys and for
keys nobody knows (`torchdistx_path:`): Axolotl reads its config through a dict that returns None for missing keys,
so an empty key there is the same as an absent one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from newt.axolotl.keys import CHAT_TEMPLATE_NAMES, CHATML, DATASET_KEYS, KEYS, TRL_KEYS, Key

_OFF = (None, False, "", [], {})

# Dataset `type`s newt reads; any other (Axolotl's prompt strategies, e.g. `chatml.intel`) matters only for rl.
SFT_TYPES = ("chat_template", "alpaca", "completion", "input_output")
# The column/field settings of Axolotl's preference prompt strategies (they go with the strategy's `type`).
PREFERENCE_FIELDS = ("field_messages", "field_chosen", "field_rejected", "field_prompt", "field_system",
                     "field_completion", "field_label", "message_property_mappings", "roles", "prompt_format",
                     "chosen_format", "rejected_format")


def _off(value: Any) -> bool:
    return any(value is o or (value == o and type(value) is type(o)) for o in _OFF)


def _same(a: Any, b: Any) -> bool:
    return a == b and (type(a) is type(b) or {type(a), type(b)} <= {int, float})


def _apply(data: dict[str, Any], known: set[str], table: dict[str, Key], where: str
           ) -> tuple[dict[str, Any], list[str], list[str]]:
    out: dict[str, Any] = {k: v for k, v in data.items() if k in known or k not in table}
    problems: list[str] = []
    notes: list[str] = []
    for key, value in data.items():
        if key in known or key not in table:
            if key not in known and _off(value):  # a key nobody knows, left empty: asks for nothing
                del out[key]
                notes.append(f"{where}{key}: empty and not a newt key; ignored")
            continue
        entry, name = table[key], f"{where}{key}"
        if entry.kind == "applied" and entry.to is not None:
            new = entry.to(value)
            if not new:
                notes.append(f"{name}: {value!r} asks for nothing; accepted (you can delete it)")
            for target, val in new.items():
                if isinstance(val, dict) and isinstance(out.get(target), dict):
                    clash = {k: v for k, v in val.items() if k in out[target] and out[target][k] != v}
                    if clash:
                        problems.append(f"{name}: Axolotl key means {where}{target}: {val!r}, but "
                                        f"{where}{target} is also set to {out[target]!r}; keep one of them")
                        continue
                    out[target] = {**out[target], **val}
                elif target in out and out[target] != val:
                    problems.append(f"{name}: Axolotl key means {where}{target}: {val!r}, but {where}{target} "
                                    f"is also set to {out[target]!r}; keep one of them")
                    continue
                else:
                    out[target] = val
                notes.append(f"{name}: {value!r} read as {where}{target}: {val!r}")
        elif entry.kind == "noted":
            notes.append(f"{name}: accepted; {entry.text}")
        elif any(_same(value, v) for v in entry.agrees):
            notes.append(f"{name}: {value!r} is what newt does; accepted (you can delete it)")
        elif _off(value):
            notes.append(f"{name}: {value!r} asks for nothing; accepted (you can delete it)")
        else:
            problems.append(f"{name}: Axolotl key {key!r} is not supported by newt: {entry.text}")
    return out, problems, notes


def _pre(data: dict[str, Any], fields: Mapping[str, set[str]]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Axolotl readings that need more than one key, done before the table."""
    data = dict(data)
    problems: list[str] = []
    notes: list[str] = []
    if data.get("load_in_4bit") is True:
        if data.get("adapter") == "qlora":
            notes.append("load_in_4bit: True is implied by adapter: qlora; accepted (you can delete it)")
        else:
            problems.append("load_in_4bit: true needs adapter: qlora (newt's LoRA on a 4-bit base); set adapter: "
                            "qlora")
        del data["load_in_4bit"]
    gc = data.get("gradient_checkpointing")
    if isinstance(gc, str) and gc in ("offload", "unsloth"):
        # Axolotl's activation offloading variants: checkpointing still happens, offloading is a memory saving.
        data["gradient_checkpointing"] = True
        notes.append(f"gradient_checkpointing: {gc!r} read as true (activation offloading is not used)")
    if data.get("torch_compile") == "auto":
        # Axolotl's auto compiles where the installed torch supports it, which every torch newt runs on does
        data["torch_compile"] = True
        notes.append("torch_compile: 'auto' read as true (the installed torch compiles)")
    if data.get("batch_size") and not data.get("gradient_accumulation_steps"):
        micro = data.get("micro_batch_size") or 1
        batch = data.pop("batch_size")
        if isinstance(batch, int) and isinstance(micro, int) and batch % micro == 0:
            data["gradient_accumulation_steps"] = batch // micro
            notes.append(f"batch_size: {batch} read as gradient_accumulation_steps: {batch // micro} "
                         f"(micro_batch_size {micro})")
        else:
            problems.append(f"batch_size: {batch!r} is not a multiple of micro_batch_size {micro!r}; set "
                            "gradient_accumulation_steps instead")
    elif "batch_size" in data:
        value = data.pop("batch_size")
        notes.append(f"batch_size: {value!r} accepted; gradient_accumulation_steps is set and decides")
    pre = data.pop("pretraining_dataset", None)
    if pre:
        entries = pre if isinstance(pre, list) else [pre]
        if data.get("datasets"):
            problems.append("pretraining_dataset: set together with datasets; keep one of them")
        else:
            data["datasets"] = [_pretraining_entry(e) for e in entries]
            notes.append("pretraining_dataset: read in full as datasets of type completion (not streamed)")
    elif "pretraining_dataset" in KEYS and pre is not None:
        notes.append(f"pretraining_dataset: {pre!r} asks for nothing; accepted")
    quant = data.get("model_quantization_config")
    if quant == "Mxfp4Config" and (data.get("model_quantization_config_kwargs") or {}).get("dequantize") is True:
        # An MXFP4 checkpoint loaded dequantized is the bf16 model: what newt loads anyway.
        del data["model_quantization_config"]
        notes.append("model_quantization_config: Mxfp4Config with dequantize: true read as the dequantized model")
    # Axolotl's attention booleans give way to an explicit attn_implementation (Axolotl reads it the same way).
    if data.get("attn_implementation"):
        for flag in ("flash_attention", "sdp_attention", "flex_attention", "eager_attention", "xformers_attention"):
            if data.get(flag):
                notes.append(f"{flag}: {data.pop(flag)!r} given with attn_implementation, which decides")
    template = data.get("chat_template")
    if isinstance(template, str):
        if template == "chatml" and not data.get("chat_template_jinja"):
            data.update(chat_template="jinja", chat_template_jinja=CHATML)
            notes.append("chat_template: 'chatml' read as chat_template: jinja with the ChatML template")
        elif template in CHAT_TEMPLATE_NAMES:
            data["chat_template"] = CHAT_TEMPLATE_NAMES[template]
            notes.append(f"chat_template: {template!r} read as {CHAT_TEMPLATE_NAMES[template]!r} (TRL's name)")
        elif template.startswith("tokenizer_default_fallback_"):
            data["chat_template"] = "tokenizer_default"
            notes.append(f"chat_template: {template!r} read as 'tokenizer_default' (newt names it when the "
                         "tokenizer has none)")
    elif template is None and data.get("chat_template_jinja"):
        data["chat_template"] = "jinja"  # Axolotl: a jinja template given alone means chat_template: jinja
        notes.append("chat_template_jinja given alone: read with chat_template: jinja")
    trl = data.get("trl")
    if isinstance(trl, dict):
        trl = dict(trl)
        beta = trl.pop("beta", None)
        if beta is not None:
            if data.get("rl_beta") not in (None, beta):
                problems.append(f"trl.beta: {beta!r} but rl_beta is also set to {data['rl_beta']!r}; keep one")
            else:
                data["rl_beta"] = beta
                notes.append(f"trl.beta: {beta!r} read as rl_beta: {beta!r}")
        trl, p, n = _apply(trl, fields["trl"], TRL_KEYS, "trl.")
        data["trl"] = trl
        problems += p
        notes += n
    method = data.get("rl") or ("reward" if data.get("reward_model") is True else None)  # reward_model: rl: reward
    if method and isinstance(data.get("datasets"), list):
        fixed = []
        for i, spec in enumerate(data["datasets"]):
            if isinstance(spec, dict) and isinstance(spec.get("type"), (str, dict)) and spec["type"] not in SFT_TYPES:
                dropped = [k for k in spec if k == "type" or k in PREFERENCE_FIELDS]
                spec = {k: v for k, v in spec.items() if k not in dropped}
                notes.append(
                    f"datasets[{i}]: Axolotl prompt strategy {data['datasets'][i]['type']!r} is not applied "
                    f"({', '.join(dropped)} dropped); newt reads rl: {method} rows in TRL's columns "
                    "(docs/training.md), and the prepared stage names any missing column"
                )
            fixed.append(spec)
        data["datasets"] = fixed
    return data, problems, notes


def _pretraining_entry(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    out = {k: v for k, v in entry.items() if k in ("path", "name", "split", "data_files", "ds_type")}
    out["type"] = "completion"
    out["field"] = entry.get("text_column") or "text"
    return out


def translate(data: dict[str, Any], fields: Mapping[str, set[str]]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(recipe data with Axolotl spellings rewritten, problems, notes). Keys of newt's schema pass untouched.

    `fields` names the schema's keys by section: "" (top level), "datasets" (each entry) and "trl"; the schema
    (newt.config) passes them, so this module does not import it."""
    data, problems, notes = _pre(data, fields)
    out, p, n = _apply(data, fields[""], KEYS, "")
    problems += p
    notes += n
    datasets = out.get("datasets")
    if isinstance(datasets, list):
        fixed = []
        for i, spec in enumerate(datasets):
            if not isinstance(spec, dict):
                fixed.append(spec)
                continue
            spec_out, p, n = _apply(spec, fields["datasets"], DATASET_KEYS, f"datasets[{i}].")
            if "message_property_mappings" in spec_out and "message_property_mappings" not in spec:
                # a partial mapping from the old spellings keeps the default for the other half
                spec_out["message_property_mappings"] = {
                    "role": "role", "content": "content", **spec_out["message_property_mappings"],
                }
            fixed.append(spec_out)
            problems += p
            notes += n
        out["datasets"] = fixed
    return out, problems, notes
