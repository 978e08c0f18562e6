"""Batched greedy generation (newt/generate.py) answers exactly as one row at a time does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    """The demo recipe's base model and tokenizer, and the prompts of 12 held-out-style reversal rows of mixed
    lengths (the random base model answers with a full `max_new_tokens` of varied tokens: a strict comparison)."""
    from newt import models, templates
    from newt.config import parse_recipe
    from newt.synthetic import reversal_rows

    recipe = parse_recipe((ROOT / "recipes" / "demo.yaml").read_text(), name="demo")
    model = models.load_model(recipe.base_model, dtype="float32")
    model.eval()
    tok = models.load_tokenizer(recipe.base_model)
    template = templates.template_for(recipe, tok)
    rows = reversal_rows(12, seed=3, min_len=2, max_len=20)
    prompts = [tok.apply_chat_template(r["messages"][:-1], chat_template=template, tokenize=False,
                                       add_generation_prompt=True) for r in rows]
    return recipe, model, tok, prompts


def one_at_a_time(model, tok, prompts: list[str], max_new_tokens: int, eos: int) -> list[str]:
    """The unbatched reference: transformers' own greedy `generate` on each prompt alone (no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def test_batched_answers_equal_one_row_at_a_time_on_the_demo_recipe(demo) -> None:
    from newt.generate import batches, greedy_texts

    recipe, model, tok, prompts = demo
    n = recipe.eval.max_new_tokens
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lengths)) > 3  # mixed lengths: the batch is really left-padded
    assert len(batches(lengths, n)) == 1  # all 12 rows in one batch
    batched = greedy_texts(model, tok, prompts, n)
    assert batched == one_at_a_time(model, tok, prompts, n, tok.eos_token_id)
    assert batched == greedy_texts(model, tok, prompts, n, max_rows=1)
    assert batched == greedy_texts(model, tok, prompts, n, max_rows=5)  # batches of 5, 5, 2
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) > 0 for a in batched)


def test_a_row_stops_at_its_first_eos_whatever_its_batch(demo) -> None:
    from newt.generate import greedy

    recipe, model, tok, prompts = demo
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n = recipe.eval.max_new_tokens
    free = greedy(model, ids, max_new_tokens=n, eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert all(len(a) == n for a in free)
    # Pretend the token the random model emits most is the end of turn: rows then stop early, at different steps.
    eos = Counter(t for a in free for t in a).most_common(1)[0][0]
    cut = [a[: a.index(eos) + 1] if eos in a else a for a in free]
    assert len({len(a) for a in cut}) > 1
    assert greedy(model, ids, max_new_tokens=n, eos_token_id=eos, pad_token_id=tok.pad_token_id) == cut
    assert greedy(model, ids, max_new_tokens=n, eos_token_id=[eos], pad_token_id=tok.pad_token_id, max_rows=1) == cut
    texts = [tok.decode(a, skip_special_tokens=True) for a in cut]
    assert texts == one_at_a_time(model, tok, prompts, n, eos)


def test_batches_group_by_length_within_the_row_and_token_limits() -> None:
    from newt.generate import batches

    lengths = [5, 1, 3, 2, 4]
    assert batches(lengths, 1) == [[1, 3, 2, 4, 0]]
    assert batches(lengths, 1, max_rows=2) == [[1, 3], [2, 4], [0]]
    # (rows) x (longest prompt + 1 new token) <= 8: [1,2]→2x3=6, adding 3 → 3x4=12 > 8
    assert batches(lengths, 1, max_tokens=8) == [[1, 3], [2], [4], [0]]
