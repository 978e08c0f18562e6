"""Configs written the way Axolotl's own examples are (tests/data/axolotl/) validate and plan offline as they stand,
with the hub names stood in by `builtin:` models and small local files (tests/data/axolotl/standins.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from newt.cache import KEY_LENGTH
from newt.config import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "axolotl"
STANDINS = CONFIGS / "standins.yaml"
FILES = sorted(CONFIGS.glob("*.yml"))


def test_the_corpus_covers_the_kinds_of_axolotl_configs() -> None:
    assert len(FILES) >= 20
    text = {p.name: p.read_text() for p in FILES}
    for needle in ("adapter: lora", "adapter: qlora", "fsdp_config:", "deepspeed: deepspeed_configs/", "rl: dpo",
                   "rl: orpo", "rl: kto", "rl: grpo", "rl: simpo", "rl: cpo", "processor_type: AutoProcessor",
                   "pretraining_dataset:", "type: completion", "reward_model: true", "eot_tokens:", "plugins:"):
        assert any(needle in t for t in text.values()), needle


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_config_validates_and_plans_offline(path: Path, monkeypatch) -> None:
    from newt.pipeline import nodes, plan

    monkeypatch.setenv("NEWT_STANDINS", str(STANDINS))
    recipe = load_recipe(path)
    assert recipe.name == path.stem.replace("-", "_")
    assert recipe.base_model.startswith("builtin:")  # the stand-in, noted
    assert any("stood in by" in n for n in recipe.notes)
    keys = plan(recipe)
    assert set(keys) == set(nodes(recipe)) and all(len(k.key) == KEY_LENGTH for k in keys.values())


def test_the_reward_model_config_reads_as_rl_reward(monkeypatch) -> None:
    monkeypatch.setenv("NEWT_STANDINS", str(STANDINS))
    recipe = load_recipe(CONFIGS / "reward-model.yml")
    assert recipe.rl == "reward"  # Axolotl's reward_model: true
    assert any(n.startswith("datasets[0]: Axolotl prompt strategy 'bradley_terry.chat_template' is not applied")
               for n in recipe.notes)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("NEWT_STANDINS", None)
    return subprocess.run([sys.executable, "-m", "newt.cli", *args], capture_output=True, text=True, env=full,
                          timeout=300, cwd=ROOT)


def test_validate_needs_no_network_and_plan_says_in_one_line_how_to_provide_a_local_copy(tmp_path: Path) -> None:
    config = tmp_path / "lora-8b.yml"
    data = CONFIGS / "data" / "alpaca.jsonl"
    config.write_text(f"base_model: NousResearch/Meta-Llama-3.1-8B\ndatasets:\n  - path: {data}\n    type: alpaca\n"
                      "output_dir: ./out\n")
    # a hub endpoint nothing answers on: validate must not try it
    done = _cli("validate", str(config), env={"HF_ENDPOINT": "http://127.0.0.1:9", "NEWT_STORE": str(tmp_path / "s")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: ok (recipe lora_8b, base_model NousResearch/Meta-Llama-3.1-8B")
    done = _cli("plan", str(config), env={"HF_HUB_OFFLINE": "1", "NEWT_STORE": str(tmp_path / "s"),
                                          "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode != 0
    line = ("base_model 'NousResearch/Meta-Llama-3.1-8B': the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is "
            "set) and the model is not in the local hub cache; download the model and point base_model at its "
            "folder (where the hub is reachable: hf download NousResearch/Meta-Llama-3.1-8B --local-dir DIR), or use "
            "builtin:tiny-llama")
    assert line in done.stdout + done.stderr
