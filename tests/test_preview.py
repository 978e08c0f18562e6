"""`newt preview` (newt/preview.py): SFT rows with their masks, DPO/GRPO rows as text, and no model or Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_train_rl import write_pairs

from newt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def preview_out(recipe: Path, capsys, *args: str) -> str:
    assert main(["preview", str(recipe), "--no-color", *args]) == 0
    return capsys.readouterr().out


def test_sft_preview_marks_trained_tokens_and_needs_no_model_torch_or_dagster(tiny_recipe_file, tmp_path: Path,
                                                                              monkeypatch, capsys) -> None:
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    recipe = tiny_recipe_file()
    out = preview_out(recipe, capsys, "-n", "2")  # a miss: dataset and prepared are built first
    assert out.startswith("recipe tiny, split train: 40 rows; legend: ⟦trained⟧ · masked (label -100)\n")
    assert out.count("\n── row ") == 2 and "── row 1:" in out
    blocks = out.split("\n── row ")[1:]
    for block in blocks:  # the reversal task: only the reply and its end-of-turn marker are trained
        head, text = block.split("\n", 1)
        user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        assert text.strip() == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n⟦{user[::-1]}<|im_end|>⟧"
    # Once prepared is committed, a fresh process previews from the artifact alone.
    code = ("import sys; from newt.cli import main; rc = main(sys.argv[1:]); "
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets', 'dagster') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, "preview", str(recipe), "--no-color", "-n", "2"], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout == out + "HEAVY []\n"
    assert "prepared: hit" in done.stderr


def test_validation_split_and_row_count(tiny_recipe_file, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    out = preview_out(tiny_recipe_file(), capsys, "--split", "validation", "-n", "20")
    assert out.startswith("recipe tiny, split validation: 8 rows;") and out.count("\n── row ") == 8


def test_dpo_preview_shows_prompt_chosen_and_rejected(tiny_recipe_file, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    recipe = tiny_recipe_file(name="pairs", extra=f"rl: dpo\ndatasets: [{{path: {write_pairs(tmp_path / 'p.jsonl')}}}]")
    out = preview_out(recipe, capsys, "-n", "1")
    head, row = out.split("\n\n── row 0 " + "─" * 20 + "\n")
    assert head == "recipe pairs, split train: 16 rows; legend: rl: dpo rows, text as the trainer receives it"
    word = row.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert row == (f"prompt (what the model is given):\n<|im_start|>user\n{word}<|im_end|>\n<|im_start|>assistant\n\n"
                   f"chosen (preferred completion):\n{word[::-1]}<|im_end|>\n\n"
                   f"rejected (dispreferred completion):\n{word}<|im_end|>\n\n")


def test_grpo_preview_shows_the_prompt_and_the_reward_inputs(tiny_recipe_file, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    recipe = tiny_recipe_file(extra="rl: grpo\ntrl: {reward_funcs: [exact_match]}\n")
    out = preview_out(recipe, capsys, "-n", "2")
    assert out.startswith("recipe tiny, split train: 40 rows; legend: rl: grpo rows")
    for row in out.split("\n── row ")[1:]:
        text = row.split("\n", 1)[1]
        word = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        assert text == (f"prompt (what the model is given):\n<|im_start|>user\n{word}<|im_end|>\n"
                        f"<|im_start|>assistant\n\nanswer: {json.dumps(word[::-1])}\n")


def test_fast_decoder_decodes_exactly_as_the_transformers_tokenizer() -> None:
    from newt import models
    from newt.config import parse_recipe
    from newt.preview import FastDecoder, decoder_for

    recipe = parse_recipe("base_model: builtin:tiny-llama\ndatasets: [{path: d.jsonl}]\n", name="t")
    fast = decoder_for(recipe)
    assert isinstance(fast, FastDecoder)
    tok = models.load_tokenizer(recipe.base_model)
    text = "<|im_start|>user\nhello  world\n\tdone<|im_end|>\n<|endoftext|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for piece in (ids, ids[:3], ids[3:9], ids[-2:], list(range(0, tok.vocab_size, 7))):
        assert fast.decode(piece) == tok.decode(piece)
