"""Row formats (newt/formats.py) on the built-in tiny tokenizer: exact conversations, exact labels, clear errors,
and every example recipe in recipes/examples/ prepared end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from newt.config import DatasetSpec, Recipe, load_recipe
from newt.formats import FormatError, check_columns, to_conversation
from newt.masking import render_and_mask
from newt.models import load_tokenizer
from newt.prepare import IGNORE, tokenize_source

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "recipes" / "examples").glob("*.yaml"))
OURS = ["alpaca", "chat_template", "completion", "input_output", "sharegpt"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:tiny-llama")


def recipe_with(**spec) -> Recipe:
    return Recipe.model_validate({"base_model": "builtin:tiny-llama", "sequence_len": 256,
                                  "datasets": [{"path": "x.jsonl", **spec}]})


def run(rows: list[dict], tok, tmp_path: Path, **spec) -> dict:
    recipe = recipe_with(**spec)
    raw = datasets.Dataset.from_list(rows)
    out = tokenize_source(raw, recipe, recipe.datasets[0], 0, tok, tok.chat_template, num_proc=1,
                          cache_dir=str(tmp_path), fingerprint=f"t{abs(hash(json.dumps(spec)))}")
    return out[:]


def supervised_text(tok, ids, labels) -> str:
    return tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])


CONV = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}]


def test_chat_template_rows_match_the_masking_engine(tok, tmp_path: Path) -> None:
    out = run([{"messages": CONV}], tok, tmp_path)
    ref = render_and_mask(CONV, tok, chat_template=tok.chat_template)
    assert out["input_ids"][0] == ref["input_ids"] and out["labels"][0] == ref["labels"]
    assert json.loads(out["messages"][0]) == CONV


def test_sharegpt_from_value_and_human_gpt_map_to_openai_roles(tok, tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "abc"}, {"from": "gpt", "value": "cba"}]}]
    out = run(rows, tok, tmp_path, field_messages="conversations",
              message_property_mappings={"role": "from", "content": "value"})
    assert json.loads(out["messages"][0]) == CONV
    assert out["labels"][0] == render_and_mask(CONV, tok, chat_template=tok.chat_template)["labels"]


def test_roles_maps_custom_role_names(tok, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "asker", "content": "abc"}, {"role": "bot", "content": "cba"}]}]
    with pytest.raises(FormatError, match=r"role 'asker' is not mapped.*datasets\[0\]\.roles"):
        run(rows, tok, tmp_path)
    out = run(rows, tok, tmp_path, roles={"user": ["asker"], "assistant": ["bot"]})
    assert json.loads(out["messages"][0]) == CONV


def test_alpaca_instruction_input_output_and_custom_field_names(tok, tmp_path: Path) -> None:
    out = run([{"instruction": "Reverse", "input": "abc", "output": "cba"}], tok, tmp_path, type="alpaca")
    conv = json.loads(out["messages"][0])
    assert conv == [{"role": "user", "content": "Reverse\n\nabc"}, {"role": "assistant", "content": "cba"}]
    assert supervised_text(tok, out["input_ids"][0], out["labels"][0]).startswith("cba")
    out = run([{"q": "Reverse abc", "ctx": "", "a": "cba"}], tok, tmp_path, type="alpaca",
              field_instruction="q", field_input="ctx", field_output="a")
    assert json.loads(out["messages"][0])[0] == {"role": "user", "content": "Reverse abc"}
    out = run([{"q": "Reverse", "ctx": "xyz", "a": "zyx"}], tok, tmp_path, type="alpaca",
              field_instruction="q", field_input="ctx", field_output="a")
    assert json.loads(out["messages"][0])[0]["content"] == "Reverse\n\nxyz"


def test_completion_is_trained_fully_with_eos(tok, tmp_path: Path) -> None:
    out = run([{"body": "hello world"}], tok, tmp_path, type="completion", field="body")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert labels == ids and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == "hello world"
    with pytest.raises(FormatError, match=r"reads column\(s\) \['text'\]"):
        run([{"body": "hello"}], tok, tmp_path, type="completion")


def test_input_output_trains_only_labelled_segments(tok, tmp_path: Path) -> None:
    segs = [{"text": "Q: abc\nA: ", "label": False}, {"text": "cba", "label": True}, {"text": "\n", "label": False}]
    out = run([{"parts": segs}], tok, tmp_path, type="input_output", field_segments="parts")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tok.decode(ids) == "Q: abc\nA: cba\n"  # nothing added: the segments are the text
    assert supervised_text(tok, ids, labels) == "cba"
    with pytest.raises(FormatError, match="segment 0: expected"):
        run([{"segments": [{"text": "x"}]}], tok, tmp_path, type="input_output")


def test_preference_rows_given_to_sft_fail_before_processing() -> None:
    spec = DatasetSpec(path="prefs.jsonl")
    with pytest.raises(FormatError, match=r"datasets\[2\].*preference pairs \(DPO\)"):
        check_columns(["prompt", "chosen", "rejected"], spec, "datasets[2]")


def test_wrong_type_suggests_the_right_one() -> None:
    with pytest.raises(FormatError, match=r"set datasets\[0\]\.type: alpaca"):
        check_columns(["instruction", "input", "output"], DatasetSpec(path="a.jsonl"), "datasets[0]")


def test_bad_message_names_row_and_fix() -> None:
    spec = DatasetSpec(path="a.jsonl")
    with pytest.raises(FormatError, match=r"datasets\[0\] \(a.jsonl\) row 7, message 0: expected keys 'role' and "
                                          r"'content'.*message_property_mappings"):
        to_conversation({"messages": [{"from": "human", "value": "x"}]}, spec, "datasets[0]", 7, {"human": "user"})


def test_every_format_has_an_example_recipe() -> None:
    assert set(OURS) <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("name", OURS)
def test_example_recipe_prepares(name: str, tmp_path: Path, monkeypatch) -> None:
    from newt.cache import Store
    from newt.pipeline import plan, run_stage

    monkeypatch.chdir(ROOT)  # example paths are relative to the repository root
    recipe = load_recipe(ROOT / "recipes" / "examples" / f"{name}.yaml")
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe, ("prepared",))
    run_stage(recipe, "dataset", store, keys=keys, log=lambda m: None)
    out = run_stage(recipe, "prepared", store, keys=keys, log=lambda m: None)
    data = datasets.load_from_disk(str(Path(out.uri) / "data"))
    assert out.metadata["rows_train"] + out.metadata["rows_validation"] == 4 or recipe.sample_packing
    assert all(any(x != IGNORE for x in lab) for lab in data["validation"]["labels"])
    assert out.metadata["supervised_tokens"] > 0


def test_text_formats_never_train_pad_ids(tok, tmp_path: Path) -> None:
    # The masking rule holds on every path: a pad token written inside a trained segment stays untrained.
    segs = [{"text": "Q: ab\nA: ", "label": False}, {"text": f"ba{tok.pad_token}", "label": True}]
    out = run([{"segments": segs}], tok, tmp_path, type="input_output")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tok.pad_token_id in ids and tok.pad_token_id != tok.eos_token_id
    assert [lab for t, lab in zip(ids, labels) if t == tok.pad_token_id] == [IGNORE]
    assert supervised_text(tok, ids, labels) == "ba"
