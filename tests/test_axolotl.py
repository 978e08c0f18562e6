"""Axolotl configs load as they stand: each Axolotl key is applied, noted or refused (newt/axolotl/keys.py), every
problem of a file is reported at once, an empty value means unset, and suggestions are only for close spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from newt.axolotl import keys
from newt.config import DatasetSpec, Recipe, RecipeError, TrlConfig, close_match, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "recipes" / "examples" / "axolotl_style.yaml"
BASE = "base_model: m\ndatasets: [{path: d.jsonl}]\n"

# The head of a typical Axolotl QLoRA example, with keys newt refuses and two typos.
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
wandb_project: llama3
lora_model_dir: ./old-adapter
lora_rr: 8
gradient_checkpointing_kwarg: {use_reentrant: false}
"""


def test_the_shipped_axolotl_example_is_a_recipe_as_it_stands() -> None:
    recipe = load_recipe(EXAMPLE)
    assert recipe.lora_target_linear is True and recipe.lora_target_modules == "all-linear"
    assert recipe.attn_implementation == "sdpa"  # sdp_attention: true
    assert recipe.datasets[0].message_property_mappings == {"role": "role", "content": "content"}
    assert recipe.lora_r == 16 and recipe.val_set_size == 0.05 and recipe.micro_batch_size == 32
    notes = "\n".join(recipe.notes)
    for key in ("model_type", "output_dir", "datasets[0].message_field_role"):
        assert f"{key}: " in notes, key


def test_refused_keys_and_typos_fail_together_in_one_list() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(TYPICAL, source="qlora.yml", name="qlora")
    problems = info.value.problems
    assert str(info.value).startswith("qlora.yml: 5 problems:")  # wandb_project is a recipe key (issue 18)
    assert problems[:2] == [
        "lora_model_dir: Axolotl key 'lora_model_dir' is not supported by newt: " + keys.KEYS["lora_model_dir"].text,
        "datasets[0].shards: Axolotl key 'shards' is not supported by newt: " + keys.DATASET_KEYS["shards"].text,
    ]
    assert problems[2] == "lora_rr: unknown key; did you mean 'lora_r'?"
    assert problems[3] == "gradient_checkpointing_kwarg: unknown key; did you mean 'gradient_checkpointing_kwargs'?"
    # the allowed keys once, at the end, not after every unknown key
    assert problems[4].startswith("<top level>: allowed keys here are base_model, ")
    assert sum("allowed keys here" in p for p in problems) == 1
    # noted keys (output_dir, dataset_prepared_path, model_type, ...) and load_in_4bit with qlora are not problems
    assert not any(p.startswith(("model_type", "tokenizer_type", "output_dir", "dataset_prepared", "load_in_4bit"))
                   for p in problems)


@pytest.mark.parametrize("key", sorted(k for k, e in keys.KEYS.items() if e.kind == "refused"))
def test_each_refused_key_is_an_error_when_set_and_a_note_when_empty(key: str) -> None:
    with pytest.raises(RecipeError, match=f"{key}: Axolotl key '{key}' is not supported by newt: "):
        parse_recipe(BASE + f"{key}: some-value\n")
    recipe = parse_recipe(BASE + f"{key}:\n")
    assert f"{key}: None asks for nothing; accepted (you can delete it)" in recipe.notes


@pytest.mark.parametrize("key", sorted(k for k, e in keys.KEYS.items() if e.kind == "noted"))
def test_each_noted_key_is_accepted_with_its_note_whatever_its_value(key: str) -> None:
    recipe = parse_recipe(BASE + f"{key}: some-value\n")
    assert f"{key}: accepted; {keys.KEYS[key].text}" in recipe.notes


def test_the_table_never_shadows_the_schema_and_names_every_same_named_key() -> None:
    # An entry without `to` is a key of newt's schema with Axolotl's meaning; every other entry is Axolotl-only.
    for table, model in ((keys.KEYS, Recipe), (keys.DATASET_KEYS, DatasetSpec), (keys.TRL_KEYS, TrlConfig)):
        for key, entry in table.items():
            same_named = entry.kind == "applied" and entry.to is None
            special = key in ("load_in_4bit", "batch_size", "pretraining_dataset", "beta")  # multi-key readings
            assert (key in model.model_fields) == (same_named and not special), key


def test_an_empty_value_means_unset_for_newt_and_unknown_keys() -> None:
    recipe = parse_recipe(BASE + "lora_r:\nsave_steps:\ntf32:\ntorchdistx_path:\ngptq_groupsize:\nadapter:\n"
                          "eval: {max_samples: }\n")
    assert recipe.lora_r == 8 and recipe.save_steps == 50 and recipe.tf32 is False
    assert recipe.eval.max_samples == 200
    assert recipe.adapter is None  # null is a value of adapter: a full fine-tune, as in Axolotl
    assert "lora_r: empty, so the default applies (8)" in recipe.notes
    assert "eval.max_samples: empty, so the default applies (200)" in recipe.notes
    assert "torchdistx_path: empty and not a newt key; ignored" in recipe.notes
    assert "gptq_groupsize: empty and not a newt key; ignored" in recipe.notes


def test_suggestions_only_for_close_spellings() -> None:
    fields = list(Recipe.model_fields)
    assert close_match("learing_rate", fields) == "learning_rate"
    assert close_match("lora_rr", fields) == "lora_r"
    assert close_match("micro_batch_szie", fields) == "micro_batch_size"  # a swap is one edit
    # different keys that merely share letters get no suggestion (they used to get a wrong one)
    assert close_match("num_labels", fields) is None
    assert close_match("lora_o_kernl", fields) is None
    assert close_match("gradient_checkpointing_kwargs_x", ["gradient_checkpointing"]) is None
    with pytest.raises(RecipeError) as info:
        parse_recipe(BASE + "lora_o_kernl: 1\n")
    assert info.value.problems[0] == ("lora_o_kernl: unknown key; remove it (the allowed keys of <top level> are "
                                      "listed below)")


def test_value_errors_say_the_fix() -> None:
    assert parse_recipe(BASE + "bf16: auto\n").bf16 == "auto"
    with pytest.raises(RecipeError) as info:
        parse_recipe(BASE + "bf16: maybe\nrl: orpoo\noptimizer: adamw_bnb_8bt\nlora_r: x\n")
    p = {line.split(":", 1)[0]: line for line in info.value.problems}
    assert p["rl"] == "rl: got 'orpoo'; choose one of: dpo, kto, grpo, orpo, simpo, cpo, reward (did you mean 'orpo'?)"
    assert p["bf16"] == ("bf16: got 'maybe'; input should be a valid boolean, unable to interpret input; write true "
                         "or false; or choose one of: auto")  # the union's two alternatives, one line
    assert p["optimizer"].startswith("optimizer: got 'adamw_bnb_8bt'; not an optimizer transformers knows; choose "
                                     "one of: adamw_torch, ")
    assert p["optimizer"].endswith("(did you mean 'adamw_bnb_8bit'?)")
    assert p["lora_r"] == ("lora_r: got 'x'; input should be a valid integer, unable to parse string as an integer; "
                           "write a whole number")
    assert len(info.value.problems) == 4


def test_cross_field_rules_report_every_problem_at_once() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(BASE + "chat_template: jinja\nwarmup_ratio: 0.1\nwarmup_steps: 5\ndeepspeed: zero2.json\n"
                     "fsdp: [full_shard]\nplugins: [my.plugins.Thing]\nload_in_8bit: true\nadapter: qlora\n")
    assert info.value.problems == [
        "chat_template is 'jinja' but chat_template_jinja is empty; set chat_template_jinja",
        "warmup_ratio and warmup_steps are both set; keep one of them",
        "load_in_8bit: true needs adapter: lora (8-bit LoRA), but adapter is 'qlora'; use adapter: lora, or remove "
        "load_in_8bit (qlora is already 4-bit)",
        "deepspeed and fsdp are both set; keep one of them",
        "plugins[0]: 'my.plugins.Thing' is not an Axolotl plugin newt applies; newt applies LigerPlugin, "
        "CutCrossEntropyPlugin (by class name); remove it",
    ]


def test_multi_key_readings() -> None:
    r = parse_recipe(BASE + "micro_batch_size: 2\nbatch_size: 16\ngradient_checkpointing: offload\n"
                     "trl: {beta: 0.04, log_completions: true}\nrl: grpo\nattention: flash\nfp16: true\n"
                     "chat_template: chatml\n")
    assert r.gradient_accumulation_steps == 8 and r.gradient_checkpointing is True and r.rl_beta == 0.04
    assert r.attn_implementation == "flash_attention_2" and r.mixed_precision == "fp16"
    assert r.chat_template == "jinja" and r.chat_template_jinja == keys.CHATML
    assert "trl.log_completions: accepted; logging only" in r.notes
    assert parse_recipe(BASE + "chat_template: qwen_25\n").chat_template == "qwen2_5"
    assert parse_recipe(BASE + "torch_compile: auto\n").torch_compile is True
    renamed = parse_recipe(BASE + "dataset_processes: 3\neval_max_new_tokens: 64\neval: {max_samples: 5}\n")
    assert renamed.dataset_num_proc == 3 and (renamed.eval.max_new_tokens, renamed.eval.max_samples) == (64, 5)
    hub = parse_recipe(BASE + "flash_attention: true\nattn_implementation: kernels-community/vllm-flash-attn3\n"
                       "model_quantization_config: Mxfp4Config\nmodel_quantization_config_kwargs: {dequantize: true}\n")
    assert hub.attn_implementation == "kernels-community/vllm-flash-attn3"  # the explicit key decides
    assert "flash_attention: True given with attn_implementation, which decides" in hub.notes
    assert "model_quantization_config: Mxfp4Config with dequantize: true read as the dequantized model" in hub.notes
    with pytest.raises(RecipeError, match="attn_implementation: got 'flash_atention_2'; choose one of: eager, sdpa, "
                                          r".*\(did you mean 'flash_attention_2'\?\)"):
        parse_recipe(BASE + "attn_implementation: flash_atention_2\n")
    with pytest.raises(RecipeError, match="model_quantization_config: Axolotl key 'model_quantization_config' is not"):
        parse_recipe(BASE + "model_quantization_config: Mxfp4Config\n")
    with pytest.raises(RecipeError, match="trl.beta: 0.04 but rl_beta is also set to 0.1; keep one"):
        parse_recipe(BASE + "rl_beta: 0.1\ntrl: {beta: 0.04}\n")
    pre = parse_recipe("base_model: m\npretraining_dataset: [{path: web/text, name: s, text_column: body, "
                       "type: pretrain}]\nmax_steps: 5\n")
    assert [(d.path, d.name, d.type, d.field) for d in pre.datasets] == [("web/text", "s", "completion", "body")]
    dpo = parse_recipe("base_model: m\nrl: dpo\ndatasets: [{path: d, type: chatml.intel, field_chosen: c}]\n")
    assert dpo.datasets[0].type == "chat_template"  # the strategy and its fields are dropped, with a note
    assert any(n.startswith("datasets[0]: Axolotl prompt strategy 'chatml.intel' is not applied (type, "
                            "field_chosen dropped)") for n in dpo.notes)


def test_two_files_deriving_one_group_name_are_an_error(tmp_path: Path) -> None:
    from newt.config import check_unique_names

    for stem in ("lora-1b", "lora_1b"):
        (tmp_path / f"{stem}.yml").write_text(BASE)
    recipes = [load_recipe(tmp_path / "lora-1b.yml"), load_recipe(tmp_path / "lora_1b.yml")]
    with pytest.raises(RecipeError, match="its asset group name 'lora_1b' is also the name of .*lora-1b.yml; rename"):
        check_unique_names(recipes)


def test_an_axolotl_yml_with_a_dash_in_its_name_is_an_asset_group(tiny_recipe_file, tmp_path: Path) -> None:
    from definitions import build_definitions
    from resources import NewtStore

    recipes = tiny_recipe_file().parent
    (recipes / "axo-1b.yml").write_text(
        (recipes / "tiny.yaml").read_text() + "model_type: AutoModelForCausalLM\nlora_target_linear: true\n"
        "wandb_project:\noutput_dir: ./out\n"
    )
    defs = build_definitions(recipes, NewtStore(root=str(tmp_path / "store")))
    graph = defs.resolve_asset_graph()
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"tiny", "axo_1b"}
    assert {j.name for j in defs.jobs} == {"tiny_job", "axo_1b_job"}


def test_lr_scheduler_takes_every_transformers_schedule() -> None:
    from transformers.trainer_utils import SchedulerType

    for schedule in SchedulerType:  # the names come from transformers itself, not from a list in newt
        assert parse_recipe(BASE + f"lr_scheduler: {schedule.value}\n").lr_scheduler == schedule.value
    with pytest.raises(RecipeError, match=r"lr_scheduler: got 'cosin'; not a learning-rate schedule transformers "
                                          r"knows; choose one of: linear, cosine, .*\(did you mean 'cosine'\?\)"):
        parse_recipe(BASE + "lr_scheduler: cosin\n")
