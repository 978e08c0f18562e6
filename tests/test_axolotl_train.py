"""Axolotl keys through real (tiny) trainings: evaluation during training, new tokens end to end (prepared →
trained → merged), and `rl: orpo | simpo | cpo` through TRL's experimental trainers."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import materialize_trained
from test_train_rl import recipe_with, write_pairs

from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan, run_stage


@pytest.mark.slow
def test_eval_loss_beside_the_loss_and_new_tokens_through_prepare_train_and_merge(tiny_recipe_file,
                                                                                    tmp_path: Path) -> None:
    from newt.models import load_model, load_tokenizer

    recipe = load_recipe(tiny_recipe_file(extra="max_steps: 2\neval_steps: 1\nsave_steps: 1\nsave_total_limit: 1\n"
                                          "tokens: ['<tool>']\nspecial_tokens: {pad_token: '<pad>'}\n"
                                          "lora_modules_to_save: []\nloss_watchdog_threshold: 100.0\n"))
    root = tmp_path / "store"
    meta = materialize_trained(recipe, root)
    # the held-out split (val_set_size: 8) is evaluated at every step, its loss kept beside the training loss
    assert [row["step"] for row in meta["eval_loss_history"]] == [1, 2]
    assert all(row["eval_loss"] > 0 for row in meta["eval_loss_history"])
    assert [row["step"] for row in meta["loss_history"]] == [1, 2]
    store = Store(str(root))
    keys = plan(recipe)
    adapter = store.local_path("trained", keys["trained"].key) / "adapter"
    tok = load_tokenizer(str(adapter))
    assert tok.pad_token == "<pad>" and tok.convert_tokens_to_ids("<tool>") == len(tok) - 1
    merged = store.local_path("merged", run_stage(recipe, "merged", store, keys=keys, log=lambda m: None).key)
    model = load_model(str(merged / "model"))
    base = load_model("builtin:tiny-llama")
    assert base.get_input_embeddings().weight.shape[0] == len(tok) - 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # the grown vocabulary, merged
    # the new rows are trained: the embedding and the head (untied here) joined modules_to_save, in full
    hidden = base.config.hidden_size
    lora = sum(sum(p.shape) for n, p in base.named_parameters() if n.endswith("proj.weight"))  # A: r×in, B: out×r
    assert meta["trainable_parameters"] == 2 * len(tok) * hidden + recipe.lora_r * lora


@pytest.mark.slow
@pytest.mark.parametrize("extra, method, extra_metric", [
    ("rl: orpo\norpo_alpha: 0.2\n", "orpo", {"beta": 0.2}),
    ("rl: simpo\nrl_beta: 2.0\nsimpo_gamma: 0.5\n", "simpo", {"loss_type": "simpo", "cpo_alpha": 0.0}),
    ("rl: cpo\ncpo_alpha: 0.5\n", "cpo", {"cpo_alpha": 0.5}),
])
def test_reference_free_preference_methods_train(extra: str, method: str, extra_metric: dict, tiny_recipe_file,
                                                 tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl")
    meta = materialize_trained(recipe_with(tiny_recipe_file, tmp_path, extra + "max_steps: 2\n", data),
                               tmp_path / "store")
    assert meta["method"] == method and meta["global_step"] == 2
    assert {k: meta[k] for k in extra_metric} == extra_metric
    assert len(meta["loss_history"]) == 2 and all(row["loss"] > 0 for row in meta["loss_history"])


@pytest.mark.slow
def test_kto_weights_reach_the_kto_trainer(tiny_recipe_file, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe_file, tmp_path, "rl: kto\nmax_steps: 1\nkto_desirable_weight: 0.2\n"
                         "kto_undesirable_weight: 1.5\n", write_pairs(tmp_path / "p.jsonl"))
    meta = materialize_trained(recipe, tmp_path / "store")
    assert (meta["method"], meta["desirable_weight"], meta["undesirable_weight"]) == ("kto", 0.2, 1.5)
