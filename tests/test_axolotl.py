"""Axolotl migration: the supported subset loads as it stands; every other Axolotl key is named in one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from newt import axolotl
from newt.config import DatasetSpec, Recipe, RecipeError, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "recipes" / "examples" / "axolotl_style.yaml"

# The head of a typical Axolotl QLoRA example (examples/llama-3/qlora.yml style), keys newt cannot honour.
TYPICAL = """\
base_model: NousResearch/Meta-Llama-3-8B
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
load_in_4bit: true
strict: false
datasets:
  - path: aaditya/alpaca_subset_1
    type: alpaca
    shards: 4
dataset_prepared_path: last_run_prepared
output_dir: ./outputs/qlora-out
adapter: qlora
lora_target_linear: true
sequence_len: 4096
pad_to_sequence_len: true
wandb_project: llama3
special_tokens:
  pad_token: "<|end_of_text|>"
lora_rr: 8
"""


def test_the_shipped_axolotl_example_is_a_recipe_as_it_stands() -> None:
    recipe = load_recipe(EXAMPLE)
    assert recipe.lora_target_modules == "all-linear"  # lora_target_linear: true
    assert recipe.attn_implementation == "sdpa"  # sdp_attention: true
    assert recipe.datasets[0].message_property_mappings == {"role": "role", "content": "content"}
    assert recipe.lora_r == 16 and recipe.val_set_size == 0.05 and recipe.micro_batch_size == 32
    notes = "\n".join(recipe.notes)
    # nothing is dropped silently: every Axolotl-only key of the file is accounted for in a note
    for key in (
        "model_type",
        "output_dir",
        "lora_target_linear",
        "special_tokens",
        "datasets[0].message_field_role",
    ):
        assert f"{key}: " in notes, key


def test_unsupported_axolotl_keys_fail_together_in_one_clear_list() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(TYPICAL, source="qlora.yml", name="qlora")
    problems = info.value.problems
    text = str(info.value)
    assert text.startswith("qlora.yml: 6 problems:")  # wandb_project is a recipe key since issue 18
    for key in (
        "dataset_prepared_path",
        "output_dir",
        "pad_to_sequence_len",
        "special_tokens",
    ):
        assert any(
            p.startswith(f"{key}: Axolotl key {key!r} is not supported by newt: ") for p in problems
        ), key
    assert any(
        p.startswith("datasets[0].shards: Axolotl key 'shards' is not supported by newt") for p in problems
    )
    assert "one folder per stage key" in text  # the reason and the alternative are named
    # a plain typo is still a typo, with its "did you mean"
    assert any(p.startswith("lora_rr: unknown key; did you mean 'lora_r'?") for p in problems)
    # accepted Axolotl keys (the Auto classes newt always uses, strict: false, load_in_4bit with qlora) are not
    assert not any(p.startswith(("model_type", "tokenizer_type", "strict", "load_in_4bit")) for p in problems)
    with pytest.raises(
        RecipeError,
        match="load_in_4bit: Axolotl key 'load_in_4bit' is not supported by newt: write `adapter: qlora`",
    ):
        parse_recipe("base_model: m\ndatasets: [{path: d}]\nadapter: lora\nload_in_4bit: true\n")


@pytest.mark.parametrize("key", sorted(axolotl.UNSUPPORTED))
def test_each_unsupported_key_is_an_error_when_set_and_a_note_when_empty(key: str) -> None:
    base = "base_model: m\ndatasets: [{path: d.jsonl}]\n"
    with pytest.raises(RecipeError, match=f"{key}: Axolotl key '{key}' is not supported by newt: "):
        parse_recipe(base + f"{key}: some-value\n")
    recipe = parse_recipe(base + f"{key}:\n")
    assert any(n.startswith(f"{key}: None asks for nothing") for n in recipe.notes)


def test_renames_conflicting_with_an_explicit_newt_key_are_errors() -> None:
    with pytest.raises(
        RecipeError,
        match="flash_attention: Axolotl key means attn_implementation: "
        "'flash_attention_2', but attn_implementation is also set to 'eager'",
    ):
        parse_recipe(
            "base_model: m\ndatasets: [{path: d}]\nattn_implementation: eager\nflash_attention: true\n"
        )


def test_the_lists_never_shadow_a_key_newt_has() -> None:
    # When newt's schema grows a key Axolotl has, its entry here must go: the schema always wins.
    assert not set(axolotl.UNSUPPORTED) & set(Recipe.model_fields)
    assert not set(axolotl.RENAMES) & set(Recipe.model_fields)
    assert not set(axolotl.DATASET_UNSUPPORTED) & set(DatasetSpec.model_fields)
    assert not set(axolotl.DATASET_RENAMES) & set(DatasetSpec.model_fields)


def test_an_axolotl_yml_in_the_recipes_folder_is_an_asset_group(tiny_recipe_file, tmp_path: Path) -> None:
    from definitions import build_definitions
    from resources import NewtStore

    recipes = tiny_recipe_file().parent
    (recipes / "axo.yml").write_text(
        (recipes / "tiny.yaml").read_text() + "model_type: AutoModelForCausalLM\nlora_target_linear: true\n"
        "wandb_project:\noutput_dir:\n"
    )
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    groups = {
        defs.resolve_asset_graph().get(k).group_name for k in defs.resolve_asset_graph().get_all_asset_keys()
    }
    assert groups == {"tiny", "axo"}
    assert {j.name for j in defs.jobs} == {"tiny_job", "axo_job"}
