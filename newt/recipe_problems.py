"""A recipe file's problems in newt's words: pydantic's validation errors become one line per key (the key path,
the value, what the key takes and the fix), the allowed keys are listed once per section, and empty values are read
as "unset" before validation. It knows the schema only through the root model it is given, so `newt.config` (the
schema) imports it and not the other way round.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import BaseModel

from newt.spelling import close_match


def _allows_none(annotation: Any) -> bool:
    return annotation is Any or annotation is type(None) or type(None) in get_args(annotation)


def drop_unset(data: Any, model: type[BaseModel]) -> tuple[Any, list[str]]:
    """An empty value (`lora_r:` → null) means "unset": a key whose type has no null is removed, so its default
    applies, in nested sections too. A key whose type takes null keeps it (null means something there, e.g.
    `adapter:` = full fine-tune, `role_boundaries[].end:` = to the end of the row)."""
    if not isinstance(data, dict):
        return data, []
    out: dict[Any, Any] = {}
    notes: list[str] = []
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            out[key] = value
            continue
        if value is None and not _allows_none(info.annotation):
            notes.append(f"{key}: empty, so the default applies ({default_text(info)})")
            continue
        inner = inner_model(info.annotation)
        if inner is not None and isinstance(value, dict):
            value, sub = drop_unset(value, inner)
            notes += [f"{key}.{n}" for n in sub]
        elif inner is not None and isinstance(value, list):
            items = []
            for i, item in enumerate(value):
                item, sub = drop_unset(item, inner)
                items.append(item)
                notes += [f"{key}[{i}].{n}" for n in sub]
            value = items
        out[key] = value
    return out, notes


def default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default
    return "see reference" if isinstance(value, BaseModel) else repr(value)


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc` (for "did you mean" on unknown keys)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = inner_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = inner_model(arg)
        if found is not None:
            return found
    return None


_TYPE_TAGS = ("str", "int", "float", "bool", "dict", "list", "none")


def _user_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """`loc` without pydantic's union/validator tags (`list[str]`, `function-after[...]`), walking the input so
    that a user's own key that merely looks like a tag (`"["`) is kept."""
    out: list[Any] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        elif isinstance(part, str) and ("[" in part or part.startswith("function-")
                                        or (node is not None and not isinstance(node, dict))
                                        or part in _TYPE_TAGS):
            continue  # a union member's tag (`bool`, `literal['auto']`): below a scalar or list there are no keys
        else:
            node = None
        out.append(part)
    return tuple(out)


_FIXES = {
    "int_parsing": "write a whole number", "int_type": "write a whole number",
    "int_from_float": "write a whole number", "float_parsing": "write a number", "float_type": "write a number",
    "bool_parsing": "write true or false", "bool_type": "write true or false",
    "string_type": "write text (quote it if YAML reads it as something else)", "list_type": "write a list",
    "dict_type": "write a mapping (key: value lines)", "model_type": "write a mapping (key: value lines)",
    "greater_than_equal": "raise it", "greater_than": "raise it", "less_than_equal": "lower it",
    "less_than": "lower it", "too_short": "add entries", "too_long": "remove entries",
}


def describe_errors(errors: list[dict[str, Any]], data: Any, root: type[BaseModel]) -> list[str]:
    """newt's problem lines for pydantic's errors: one line per key (a union's alternatives are merged into one),
    each with the value and the fix, and the allowed keys listed once per section that has an unknown key."""
    by_loc: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in errors:
        by_loc.setdefault(_user_loc(tuple(err["loc"]), data), []).append(err)
    problems: list[str] = []
    allowed: dict[str, list[str]] = {}
    for loc, errs in by_loc.items():
        where = key_path(loc)
        if errs[0]["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1], root)
            known = list(owner.model_fields) if owner else []
            hint = close_match(str(loc[-1]), known)
            section = key_path(tuple(p for p in loc[:-1] if not isinstance(p, int)))
            allowed.setdefault(section, known)
            problems.append(f"{where}: unknown key; " + (f"did you mean {hint!r}?" if hint else
                            f"remove it (the allowed keys of {section} are listed below)"))
        elif errs[0]["type"] == "missing":
            owner = _model_at(loc[:-1], root)
            desc = owner.model_fields[loc[-1]].description if owner and loc[-1] in owner.model_fields else ""
            problems.append(f"{where}: required key is missing; add it ({desc})")
        elif len(errs) == 1 and errs[0]["type"] == "value_error" and not loc:
            problems += _message(errs[0]).split("\n")  # cross-field rules: one problem per line
        else:
            shown = repr(errs[0].get("input"))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            expected = "; or ".join(dict.fromkeys(_expectation(e) for e in errs))
            problems.append(f"{where}: got {shown}; {expected}")
    for section, known in allowed.items():
        problems.append(f"{section}: allowed keys here are {', '.join(known)}")
    return problems


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg[0].lower() + msg[1:]


def _expectation(err: dict[str, Any]) -> str:
    """What the key takes and how to fix the value, for one pydantic error."""
    kind, value, text = err["type"], err.get("input"), _message(err)
    expected = (err.get("ctx") or {}).get("expected")
    if kind == "literal_error" and expected:
        options = re.findall(r"'([^']*)'", expected)
        hint = close_match(value, options) if isinstance(value, str) else None
        return f"choose one of: {', '.join(options)}" + (f" (did you mean {hint!r}?)" if hint else "")
    fix = _FIXES.get(kind)
    return f"{text}; {fix}" if fix else text
