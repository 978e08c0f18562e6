"""Sample packing: bins respect capacity and are deterministic; packed rows collated TRL's padding-free way give the
same loss as the rows one by one (CPU, sdpa: transformers builds a block-diagonal mask from the position ids)."""

from __future__ import annotations

import numpy as np
import torch

from newt.packing import best_fit_decreasing, fill
from newt.synthetic import reversal_rows


def test_best_fit_decreasing_fills_bins_within_capacity() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(lengths[b].sum() <= 128 for b in bins)
    assert bins == best_fit_decreasing(lengths, 128)  # deterministic
    assert fill(lengths, bins, 128) > 0.97
    assert len(bins) == int(np.ceil(lengths.sum() / 128))  # as few bins as the total allows, here


def test_rows_longer_than_a_bin_are_rejected() -> None:
    import pytest

    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing(np.array([10, 200]), 128)


def _rows(n: int = 6):
    from newt.masking import Masker
    from newt.models import load_tokenizer

    tok = load_tokenizer("builtin:tiny-llama")
    convs = [r["messages"] for r in reversal_rows(n, seed=3)]
    out = Masker(tok, chat_template=tok.chat_template)(convs)
    return tok, out["input_ids"], out["labels"]


def _token_loss_sum(model, batch: dict) -> tuple[float, int]:
    # use_cache=False as SFTTrainer.compute_loss sets it: with a cache, transformers skips the packed-sequence mask
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    labels = batch["labels"]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return float(loss), int((labels[:, 1:] != -100).sum())


def test_packed_and_unpacked_losses_agree() -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from newt.models import load_model

    tok, ids, labels = _rows()
    model = load_model("builtin:tiny-llama", dtype=torch.float32, attn_implementation="sdpa").eval()
    plain = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
    free = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    with torch.no_grad():
        unpacked = [_token_loss_sum(model, plain([{"input_ids": i, "labels": l}])) for i, l in zip(ids, labels)]
        # one packed row holding every example, as newt.packing writes it (seq_lengths: TRL's column)
        packed_row = {"input_ids": [t for i in ids for t in i], "labels": [t for lab in labels for t in lab],
                      "seq_lengths": [len(i) for i in ids]}
        batch = free([packed_row])
        assert batch["position_ids"][0].tolist() == [p for i in ids for p in range(len(i))]
        packed = _token_loss_sum(model, batch)
        # the same row without position ids: examples attend to each other, and the loss moves
        leaky = _token_loss_sum(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]})
    total, count = sum(s for s, _ in unpacked), sum(n for _, n in unpacked)
    assert packed[1] == count
    assert abs(packed[0] - total) / total < 1e-4
    assert abs(leaky[0] - total) / total > 1e-3


def _arrow_rows(tmp_path, n: int, seed: int = 0):
    """n rows of input_ids/labels (lengths 1..40, labels = -ids) in two Arrow files, as prepare's map writes them."""
    import datasets

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 41, size=n)
    ids = [list(range(1000 * i, 1000 * i + int(k))) for i, k in enumerate(lengths)]
    feats = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                               "labels": datasets.List(datasets.Value("int32"))})
    half = n // 2
    parts = []
    for j, (a, b) in enumerate(((0, half), (half, n))):
        d = datasets.Dataset.from_dict({"input_ids": ids[a:b], "labels": [[-t for t in r] for r in ids[a:b]]},
                                       features=feats)
        parts.append(d.map(lambda x: x, cache_file_name=str(tmp_path / f"src-{j}.arrow")))  # on disk, no indices
    return datasets.concatenate_datasets(parts), ids


def test_windowed_packing_keeps_every_row_once_and_bins_within_windows(tmp_path, monkeypatch) -> None:
    import newt.packing
    from newt.packing import pack_dataset

    rows, ids = _arrow_rows(tmp_path, 60)
    order = np.random.default_rng(1).permutation(60)[:50]  # a train split: shuffled, some rows held out
    stored = sorted(order.tolist())  # windows follow the storage order: 16, 16, 16, 2 rows
    monkeypatch.setattr(newt.packing, "WINDOW", 16)
    out = tmp_path / "out"
    out.mkdir()
    given = order.copy()
    packed, bin_order, info = pack_dataset(rows, order, 64, seed=3, cache_dir=str(out))
    assert order.tolist() == given.tolist()  # the caller's (prepared's) shuffled order is not sorted in place
    seen, windows = [], []
    for row in packed:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) == len(row["labels"]) <= 64
        start = 0
        members = []
        for k in row["seq_lengths"]:
            piece = row["input_ids"][start:start + k]
            assert row["labels"][start:start + k] == [-t for t in piece]  # labels travel with their ids
            members.append(piece[0] // 1000)  # the source row this example is
            start += k
        assert members == sorted(members)  # row order inside a bin
        seen += members
        windows.append({stored.index(r) // 16 for r in members})
    assert sorted(seen) == stored  # every train row exactly once, no held-out row
    assert all(len(w) == 1 for w in windows), "a bin never mixes rows of two windows"
    assert sorted({next(iter(w)) for w in windows}) == [0, 1, 2, 3]
    assert info["rows"] == 50 and info["bins"] == len(packed) and info["capacity"] == 64
    total = sum(len(ids[r]) for r in order)
    assert info["fill"] == round(total / (len(packed) * 64), 4)
    assert sorted(bin_order.tolist()) == list(range(len(packed)))
    again, again_order, _ = pack_dataset(rows, order, 64, seed=3, cache_dir=str(tmp_path))
    assert again["input_ids"] == packed["input_ids"] and again_order.tolist() == bin_order.tolist()  # deterministic
    _, other_order, _ = pack_dataset(rows, order, 64, seed=4, cache_dir=str(tmp_path))
    assert other_order.tolist() != bin_order.tolist()  # the seed decides the order bins are trained in
