"""`newt validate` checks everything short of training (newt/validate.py), and role mapping (newt/formats.py):
the suggestion maps an unknown opening role to `user`, and a recipe's `roles:` extends the default names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from newt.cli import main
from newt.config import DatasetSpec, load_recipe
from newt.formats import FormatError, role_lookup, to_conversation
from newt.validate import problems


def write(tmp_path: Path, name: str, fields: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base_model": "builtin:tiny-llama", **fields}, sort_keys=False))
    return path


def jsonl(tmp_path: Path, name: str, rows: list) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def msgs(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_validate_reports_missing_file_unknown_role_and_template_together(tmp_path: Path, capsys) -> None:
    """The three mistakes the issue found `newt validate` calling ok: all reported by one run, exit 2."""
    recipe = write(tmp_path, "three", {"datasets": [{"path": str(tmp_path / "missing.jsonl")}],
                                       "roles_to_train": ["asistant"], "chat_template": "chatml_v9"})
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"error: {recipe}: 3 problems:" in err
    assert f"datasets[0].path: no file or folder at {tmp_path / 'missing.jsonl'}" in err
    assert "roles_to_train names 'asistant' (did you mean 'assistant'?)" in err
    assert "chat_template: unknown template 'chatml_v9'" in err
    assert "Traceback" not in err


def test_first_row_is_read_in_the_declared_format_and_type(tmp_path: Path) -> None:
    good = jsonl(tmp_path, "good.jsonl", [msgs(("user", "a"), ("assistant", "b"))])
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text("\n" + json.dumps(msgs(("user", "a")))[:-3] + "\n")  # line 1 empty, line 2 cut off
    alpaca_as_chat = jsonl(tmp_path, "alpaca.jsonl", [{"instruction": "x", "output": "y"}])
    recipe = load_recipe(write(tmp_path, "rows", {"datasets": [
        {"path": good}, {"path": str(bad_line)}, {"path": alpaca_as_chat},
        {"path": alpaca_as_chat, "type": "alpaca"}]}))  # fmt: skip
    found = problems(recipe)
    assert len(found) == 2, found
    assert found[0].startswith(f"datasets[1].path: {bad_line} line 2 is not valid JSON (")
    assert found[1].startswith(f"datasets[2] ({alpaca_as_chat}): type 'chat_template' reads column(s) ['messages']")
    assert "set datasets[2].type: alpaca" in found[1]


def test_roles_to_train_is_checked_against_roles_and_boundaries(tmp_path: Path) -> None:
    data = jsonl(tmp_path, "d.jsonl", [msgs(("user", "a"), ("assistant", "b"))])
    base = {"datasets": [{"path": data, "roles": {"critic": ["judge"]}}]}
    assert problems(load_recipe(write(tmp_path, "mapped", {**base, "roles_to_train": ["critic"]}))) == []
    bounded = {"datasets": [{"path": data}], "roles_to_train": ["narrator"],
               "role_boundaries": [{"role": "narrator", "start": "<|im_start|>narrator"}]}
    assert problems(load_recipe(write(tmp_path, "bounded", bounded))) == []
    own = {"datasets": [{"path": data, "roles_to_train": ["asisstant"]}]}
    (problem,) = problems(load_recipe(write(tmp_path, "own", own)))
    assert problem.startswith("datasets[0].roles_to_train names 'asisstant' (did you mean 'assistant'?)")


def test_an_unknown_opening_role_is_suggested_as_user_and_a_later_one_as_assistant() -> None:
    spec = DatasetSpec(path="x.jsonl")
    row = msgs(("customer", "hi"), ("assistant", "hello"))
    with pytest.raises(FormatError, match=r"message 0: role 'customer' .*e\.g\. \{user: \[customer\]\}"):
        to_conversation(row, spec, "datasets[0]", 0, role_lookup(spec))
    with pytest.raises(FormatError, match=r"message 1: role 'agent' .*e\.g\. \{assistant: \[agent\]\}"):
        to_conversation(msgs(("user", "hi"), ("agent", "x")), spec, "datasets[0]", 0, role_lookup(spec))
    with pytest.raises(FormatError, match=r"message 1: role 'client' .*e\.g\. \{user: \[client\]\}"):
        to_conversation(msgs(("system", "s"), ("client", "hi")), spec, "datasets[0]", 0, role_lookup(spec))


def test_a_roles_mapping_extends_the_default_names() -> None:
    """Following the suggestion (`roles: {user: [customer]}`) keeps `assistant`, `gpt` and the rest mapped."""
    spec = DatasetSpec(path="x.jsonl", roles={"user": ["customer"]})
    conv = to_conversation(msgs(("customer", "hi"), ("assistant", "hello"), ("human", "more"), ("gpt", "ok")),
                           spec, "datasets[0]", 0, role_lookup(spec))
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
    # a name given again is the user's to decide: here `model` (a default assistant name) becomes the user
    remapped = role_lookup(DatasetSpec(path="x.jsonl", roles={"user": ["model"]}))
    assert remapped["model"] == "user" and remapped["gpt"] == "assistant"
