"""`newt chat`: one --prompt answered, the interactive loop driven through a pseudo-terminal, a stage that is not
built, and a vision-language base model with --image. Expected replies come from plain transformers `generate`
on the same folder with the recipe's template, independent of newt.chat."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import inprocess_launcher

from newt import cli
from newt.cache import Store
from newt.config import load_recipe
from newt.pipeline import plan, run_stage

ROOT = Path(__file__).resolve().parents[1]


def expected_reply(folder: Path, text: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture
def built(tiny_recipe_file, tmp_path: Path, monkeypatch):
    """A tiny recipe built up to `merged` in a store that NEWT_STORE points at."""
    path = tiny_recipe_file()
    recipe = load_recipe(path)
    store = Store(str(tmp_path / "store"))
    keys = plan(recipe)
    for stage in ("dataset", "prepared", "trained", "merged"):
        run_stage(recipe, stage, store, keys=keys, launcher=inprocess_launcher, log=lambda m: None)
    monkeypatch.setenv("NEWT_STORE", str(tmp_path / "store"))
    return path, store.local_path("merged", keys["merged"].key) / "model"


def test_one_prompt_is_answered_and_a_missing_stage_is_named(built, capsys) -> None:
    path, merged = built
    assert cli.main(["chat", str(path), "--prompt", "abcd", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected_reply(merged, "abcd", 8) + "\n"
    assert cli.main(["chat", str(path), "--stage", "trained", "--prompt", "abcd", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected_reply(merged, "abcd", 8) + "\n"  # adapter applied = merged (fp32)

    assert cli.main(["chat", str(path), "--stage", "quantized", "--prompt", "abcd"]) == 1
    err = capsys.readouterr().err
    assert "newt chat: the quantized stage of recipe tiny is not built for its current key" in err
    assert f"newt run {path} --stages dataset,prepared,trained,merged,quantized" in err
    assert cli.main(["chat", str(path), "--stage", "evaluation"]) == 1
    assert "--stage 'evaluation': choose base or one of trained, merged, quantized" in capsys.readouterr().err


def read_until(fd: int, marker: str, seen: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while marker not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} within {timeout} s; terminal so far: {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
    return seen


def test_interactive_loop_through_a_terminal(built) -> None:
    path, merged = built
    main, child = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "newt.cli", "chat", str(path), "--max-new-tokens", "8"],
                            stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    try:
        screen = read_until(main, "you> ", "")
        assert "newt chat: tiny, merged artifact" in screen
        os.write(main, b"abcd\n")
        screen = read_until(main, "you> ", screen.split("you> ", 1)[1])  # the next prompt: the reply is done
        answer = screen.split("assistant> ", 1)[1].split("\r\n", 1)[0]
        assert answer == expected_reply(merged, "abcd", 8)
        os.write(main, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def test_vision_language_base_model_takes_an_image(tmp_path: Path, capsys) -> None:
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from newt.models import resolve

    image = tmp_path / "red.png"
    Image.new("RGB", (28, 28), (255, 0, 0)).save(image)
    recipe_file = tmp_path / "vlm.yaml"
    recipe_file.write_text("base_model: builtin:tiny-llava\nprocessor_type: AutoProcessor\n"
                           "datasets: [{path: unused.jsonl}]\n")
    args = ["chat", str(recipe_file), "--stage", "base", "--image", str(image), "--prompt", "colour?",
            "--max-new-tokens", "6"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out

    folder = resolve("builtin:tiny-llava")
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "colour?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[Image.open(image).convert("RGB")], return_tensors="pt")
    assert (inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum() == 4
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
                         eos_token_id=processor.tokenizer.eos_token_id)
    assert out == processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) + "\n"

    assert cli.main(["chat", str(recipe_file), "--stage", "base", "--image", str(tmp_path / "nope.png"),
                     "--prompt", "x"]) == 1
    assert f"newt chat: --image '{tmp_path / 'nope.png'}': no such file" in capsys.readouterr().err
