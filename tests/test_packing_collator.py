"""Packed rows at training time (newt.train.packed.BinCollator): one batch row per bin, no attention across examples."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from test_packing import _rows, _token_loss_sum
from test_train import materialize_trained

from newt.config import load_recipe
from newt.train.packed import BinCollator, varlen_kernel


def test_bins_become_rows_with_positions_restarting_per_example() -> None:
    c = BinCollator(pad_token_id=0)
    batch = c([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, -100, 8, 9], "seq_lengths": [2, 3]},
               {"input_ids": [4, 3, 2], "labels": [4, 3, 2], "seq_lengths": [3]}])
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions decide
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 2, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]
    # each example's first token and the padding are never targets
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 3, 2, -100, -100]]
    assert c.real_tokens(1) == 8 and c.real_tokens(5) == 8
    c([{"input_ids": [1, 2], "labels": [1, 2], "seq_lengths": [2]}])
    assert c.real_tokens(1) == 8 and c.real_tokens(2) == 10


def test_binned_and_unpacked_losses_agree() -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from newt.models import load_model

    tok, ids, labels = _rows(7)
    model = load_model("builtin:tiny-llama", dtype=torch.float32, attn_implementation="sdpa").eval()
    plain = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
    bins = [[0, 1, 2], [3, 4], [5, 6]]
    packed = [{"input_ids": [t for i in b for t in ids[i]], "labels": [t for i in b for t in labels[i]],
               "seq_lengths": [len(ids[i]) for i in b]} for b in bins]
    with torch.no_grad():
        unpacked = [_token_loss_sum(model, plain([{"input_ids": i, "labels": lab}])) for i, lab in zip(ids, labels)]
        batch = BinCollator(tok.pad_token_id)(packed)
        binned = _token_loss_sum(model, batch)
        # the same rows with positions running on across examples: they attend to each other, the loss moves
        leaky = _token_loss_sum(model, {"input_ids": batch["input_ids"], "labels": batch["labels"],
                                        "position_ids": torch.arange(batch["input_ids"].shape[1]).expand_as(
                                            batch["input_ids"])})
    total, count = sum(s for s, _ in unpacked), sum(n for _, n in unpacked)
    assert binned[1] == count
    assert abs(binned[0] - total) / total < 1e-5
    assert abs(leaky[0] - total) / total > 2e-4  # the leak, at least 20x the binned rounding


def test_only_varlen_kernels_take_trls_padding_free_rows() -> None:
    assert varlen_kernel("flash_attention_2") and not varlen_kernel("sdpa") and not varlen_kernel("eager")


def test_a_packed_epoch_counts_every_real_token_once(tiny_recipe_file, tmp_path: Path) -> None:
    import datasets

    from newt.cache import Store
    from newt.pipeline import plan

    recipe = load_recipe(tiny_recipe_file(extra="sample_packing: true\nmax_steps: null\nlogging_steps: 1\n"))
    meta = materialize_trained(recipe, tmp_path / "store")
    prepared = Store(str(tmp_path / "store")).local_path("prepared", plan(recipe)["prepared"].key)
    train = datasets.load_from_disk(str(prepared / "data"))["train"]
    steps = -(-len(train) // recipe.micro_batch_size)
    assert meta["global_step"] == steps
    assert meta["num_tokens"] == sum(len(x) for x in train["input_ids"])  # each bin once, padding excluded
    assert all(math.isfinite(row["loss"]) for row in meta["loss_history"])
