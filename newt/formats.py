"""Row formats: how one stored row becomes a conversation (chat formats) or labelled text segments (text formats).

| `type`          | a row holds                                   | becomes                                             |
|-----------------|-----------------------------------------------|-----------------------------------------------------|
| `chat_template` | a list of messages (`field_messages`)          | messages, roles mapped by `roles` (ShareGPT too)    |
| `alpaca`        | instruction, optional input, output            | `[user: instruction\\n\\ninput, assistant: output]` |
| `completion`    | raw text (`field`)                             | one segment, trained fully, EOS appended            |
| `input_output`  | `segments: [{text, label}]`                    | segments; `label: true` ones are trained            |

Chat formats go through the chat template and the masking engine; text formats are tokenized as written.
Every error names the recipe key path, the row and the fix (docs/data-formats.md).
"""

from __future__ import annotations

from typing import Any

from newt.config import DatasetSpec

CHAT_TYPES = ("chat_template", "alpaca")
TEXT_TYPES = ("completion", "input_output")

# ShareGPT's names and OpenAI's own, as Axolotl's chat_template strategy maps them by default.
DEFAULT_ROLES = {
    "system": ["system"],
    "user": ["user", "human"],
    "assistant": ["assistant", "gpt", "model"],
    "tool": ["tool"],
}
# Columns that say a row was written for another training method (preference / prompt-only data).
OTHER_METHODS = {
    frozenset({"chosen", "rejected"}): "preference pairs (DPO): `prompt`/`chosen`/`rejected`",
}


class FormatError(ValueError):
    pass


def required_columns(spec: DatasetSpec) -> list[str]:
    return {
        "chat_template": [spec.field_messages],
        "alpaca": [spec.field_instruction, spec.field_output],
        "completion": [spec.field],
        "input_output": [spec.field_segments],
    }[spec.type]


def check_columns(columns: list[str], spec: DatasetSpec, key_path: str) -> None:
    """Fail before any row is processed when the data does not have the columns its `type` reads."""
    missing = [c for c in required_columns(spec) if c not in columns]
    if not missing:
        return
    hint = ""
    for cols, what in OTHER_METHODS.items():
        if cols <= set(columns):
            hint = (f" These rows look like {what}; train them with the matching method (a DPO recipe), "
                    f"not supervised fine-tuning.")
    guess = _guess_type(columns)
    fix = f"set {key_path}.type: {guess}" if guess and guess != spec.type else (
        f"point {key_path}.{_field_key(spec)} at the column that holds it")
    raise FormatError(
        f"{key_path} ({spec.path}): type {spec.type!r} reads column(s) {missing}, but the rows have columns "
        f"{columns}.{hint} Fix: {fix} (docs/data-formats.md)."
    )


def _field_key(spec: DatasetSpec) -> str:
    return {"chat_template": "field_messages", "alpaca": "field_instruction / field_output",
            "completion": "field", "input_output": "field_segments"}[spec.type]


def _guess_type(columns: list[str]) -> str | None:
    cols = set(columns)
    if cols & {"messages", "conversations", "conversation"}:
        return "chat_template"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "segments" in cols:
        return "input_output"
    if "text" in cols:
        return "completion"
    return None


def role_lookup(spec: DatasetSpec) -> dict[str, str]:
    """Role name in the data → template role: the defaults, extended (and, for a name given again, overridden) by
    the dataset's `roles`. Mapping `customer` to user must not unmap `assistant`."""
    lookup = {name: role for role, names in DEFAULT_ROLES.items() for name in names}
    lookup.update({name: role for role, names in (spec.roles or {}).items() for name in names})
    return lookup


def suggested_role(conv: list[dict[str, Any]]) -> str:
    """The template role an unknown name most likely stands for, from where it occurs: the opening turn (after
    any system prompt) and a turn after the assistant's are the user's; a turn after the user's answers it."""
    previous = next((m["role"] for m in reversed(conv) if m["role"] != "system"), None)
    return "assistant" if previous == "user" else "user"


def to_conversation(row: dict[str, Any], spec: DatasetSpec, key_path: str, index: int,
                    roles: dict[str, str]) -> list[dict[str, Any]]:
    """One row of a chat format → OpenAI-style messages."""
    where = f"{key_path} ({spec.path}) row {index}"
    if spec.type == "alpaca":
        instruction, output = row.get(spec.field_instruction), row.get(spec.field_output)
        if not isinstance(instruction, str) or not isinstance(output, str):
            raise FormatError(
                f"{where}: `alpaca` rows need string columns {spec.field_instruction!r} and {spec.field_output!r}, "
                f"got {type(instruction).__name__} and {type(output).__name__}; fix the row or set "
                f"{key_path}.field_instruction / field_output"
            )
        extra = row.get(spec.field_input)
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]

    role_key = spec.message_property_mappings.get("role", "role")
    content_key = spec.message_property_mappings.get("content", "content")
    messages = row.get(spec.field_messages)
    if not isinstance(messages, list) or not messages:
        raise FormatError(
            f"{where}: expected a non-empty list of messages in column {spec.field_messages!r}, got "
            f"{type(messages).__name__}; set {key_path}.field_messages to the column that holds the messages "
            f"(columns: {', '.join(row)})"
        )
    conv = []
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or message.get(role_key) is None or role_key not in message \
                or content_key not in message:
            keys = ", ".join(k for k, v in message.items() if v is not None) if isinstance(message, dict) \
                else type(message).__name__
            raise FormatError(
                f"{where}, message {m}: expected keys {role_key!r} and {content_key!r}, found {keys}; set "
                f"{key_path}.message_property_mappings (e.g. {{role: from, content: value}} for ShareGPT)"
            )
        name = str(message[role_key])
        if name not in roles:
            raise FormatError(
                f"{where}, message {m}: role {name!r} is not mapped to a template role (known: "
                f"{', '.join(sorted(roles))}); add it to {key_path}.roles, e.g. {{{suggested_role(conv)}: [{name}]}} "
                f"(the default names stay mapped)"
            )
        conv.append({"role": roles[name], "content": message[content_key]})
    return conv


def to_segments(row: dict[str, Any], spec: DatasetSpec, key_path: str, index: int) -> list[tuple[str, bool]]:
    """One row of a text format → (text, trained) segments."""
    where = f"{key_path} ({spec.path}) row {index}"
    if spec.type == "completion":
        text = row.get(spec.field)
        if not isinstance(text, str) or not text:
            raise FormatError(f"{where}: `completion` rows need a non-empty string in column {spec.field!r}, got "
                              f"{type(text).__name__}; fix the row or set {key_path}.field")
        return [(text, True)]
    segments = row.get(spec.field_segments)
    if not isinstance(segments, list) or not segments:
        raise FormatError(f"{where}: `input_output` rows need a non-empty list in column {spec.field_segments!r}, "
                          f"got {type(segments).__name__}; set {key_path}.field_segments")
    out = []
    for s, seg in enumerate(segments):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str) or not isinstance(seg.get("label"), bool):
            raise FormatError(f"{where}, segment {s}: expected {{text: <string>, label: true|false}}, got {seg!r}; "
                              f"label true trains the segment, false only conditions on it")
        out.append((seg["text"], seg["label"]))
    return out


def segments_as_messages(segments: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """What the `messages` column holds for text formats: the segments, role `input` (masked) or `output`."""
    return [{"role": "output" if trained else "input", "content": text} for text, trained in segments]
