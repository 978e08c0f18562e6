"""Recipe schema: good recipes load, bad ones list every problem with key path, value, allowed values and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from newt import STAGES
from newt.config import Recipe, RecipeError, iter_fields, load_recipe, parse_recipe, stage_fields

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_recipe_loads() -> None:
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes, "recipes/ holds at least the demo recipe"
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.name == path.stem


def test_defaults_follow_axolotl_names() -> None:
    r = parse_recipe("base_model: m\ndatasets: [{path: d.jsonl}]")
    assert r.train_on_inputs is False and r.roles_to_train == ["assistant"] and r.train_on_eos == "turn"
    assert r.datasets[0].type == "chat_template" and r.datasets[0].field_messages == "messages"
    assert r.sequence_len == 2048 and r.adapter == "lora"


def test_all_problems_reported_at_once_with_key_paths_and_suggestions() -> None:
    text = """
base_model: m
datasets:
  - path: d.jsonl
    typ: chat_template
    train_on_eos: lst
learning_rat: 0.1
sequence_len: many
eval: {thresholds: {exact_macth: 0.8}}
"""
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, source="recipes/bad.yaml")
    msg = str(err.value)
    # 5 problems, then the allowed keys once for each section that has an unknown key
    assert msg.startswith("recipes/bad.yaml: 7 problems:")
    assert "datasets[0].typ: unknown key; did you mean 'type'?" in msg
    assert ("datasets[0].train_on_eos: got 'lst'; choose one of: turn, all, last, none (did you mean 'last'?)"
            in msg)
    assert "learning_rat: unknown key; did you mean 'learning_rate'?" in msg
    assert "sequence_len: got 'many'; input should be a valid integer" in msg and "write a whole number" in msg
    assert "unknown metric 'exact_macth'" in msg and "did you mean 'exact_match'?" in msg
    problems = err.value.problems
    assert problems[-2].startswith("datasets: allowed keys here are path, type, split,")
    assert problems[-1].startswith("<top level>: allowed keys here are base_model, tokenizer_config,")
    assert sum("allowed keys here" in p for p in problems) == 2


def test_missing_required_keys_and_yaml_errors() -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe("lora_r: 8\n", source="r.yaml")
    assert "base_model: required key is missing; add it" in str(err.value)
    assert "datasets: required key is missing; add it" in str(err.value)
    with pytest.raises(RecipeError, match=r"r.yaml: 1 problem:\n  - YAML syntax error at line 2, column 1"):
        parse_recipe("a: [1,\n", source="r.yaml")
    with pytest.raises(RecipeError, match="expected a mapping of recipe keys"):
        parse_recipe("- just\n- a list\n", source="r.yaml")


def test_any_file_name_is_a_recipe_with_a_derived_group_name(tmp_path: Path) -> None:
    for stem, group in (("lora-1b", "lora_1b"), ("qlora.8b v2", "qlora_8b_v2"), ("3b", "_3b"), ("ok_1", "ok_1")):
        path = tmp_path / f"{stem}.yml"
        path.write_text("base_model: m\ndatasets: [{path: d}]\n")
        assert load_recipe(path).name == group
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_field_has_description_and_known_stages() -> None:
    for path, info, _type, stages in iter_fields():
        assert info.description, f"{path} has no description"
        assert set(stages) <= set(STAGES), path
    # a field is either required or has a default
    assert Recipe.model_fields["base_model"].is_required()


def test_stage_fields_split_a_dataset_entry_between_stages() -> None:
    r = parse_recipe("base_model: m\ndatasets: [{path: d.jsonl, field_messages: conv}]\nlora_r: 4")
    assert stage_fields(r, "dataset") == {
        "datasets": [{"split": "train", "data_files": None, "name": None, "ds_type": None}]
    }  # no `path`: the source's content version keys it (issue 13), not how its location is spelled
    prepared = stage_fields(r, "prepared")
    assert prepared["datasets"][0]["field_messages"] == "conv" and "path" not in prepared["datasets"][0]
    assert "lora_r" not in prepared and stage_fields(r, "trained")["lora_r"] == 4
    assert stage_fields(r, "merged") == {"merge": {"dtype": "float32"}}
    # storage options (credentials) and gates are in no key
    assert all("storage_options" not in str(stage_fields(r, s)) for s in STAGES)
    assert all("thresholds" not in str(stage_fields(r, s)) for s in STAGES)
