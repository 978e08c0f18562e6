"""Packed rows (newt/packing.py writes them) at training time: how a micro batch of bins reaches the model.

Why this is in `newt.train` and not beside the bins: it changes what training computes (the `trained` key hashes
newt/train/), never the prepared rows (the `prepared` key hashes newt/packing.py).
"""

from __future__ import annotations

from typing import Any

from newt import IGNORE_INDEX


def varlen_kernel(attn_implementation: str) -> bool:
    """Whether the attention kernel takes sequence boundaries (flash-attn's varlen path) rather than a mask."""
    return "flash" in attn_implementation


class BinCollator:
    """Packed rows → a batch of one row per bin (right-padded to the longest bin), position ids restarting at 0 for
    each example and for the padding tail, no attention mask.

    Why not TRL's padding-free collation everywhere: it concatenates the whole micro batch into ONE row; with a
    varlen kernel (flash-attn) each example then costs its own length², but through sdpa or eager transformers
    builds a block-diagonal mask over that row, and attention costs (micro batch × sequence_len)² — eight bins of
    256 tokens pay for 2048² instead of 8 × 256², which made packing slower than padding on CPU (docs/performance.md).
    Here each bin is its own batch row: transformers derives the same per-example causal mask from the position ids
    (it does so whenever no attention mask is given) at a micro-batch-size fraction of the cost.

    Each example's first token gets label -100, as in TRL's padding-free path: it is never a target in an unpacked
    row either (the shifted loss starts at the second token), and it must not be predicted from the previous example.

    `real_tokens(n)`: the real (unpadded) tokens of the first n batches it made. TRL counts a batch without an
    attention mask as `position_ids.size(1)` (right for its single padding-free row, one bin's width here), so the
    child reports this count as `num_tokens` instead (batches are consumed in the order they are made; the data
    loader may make one ahead).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.counts: list[int] = []

    def real_tokens(self, batches: int) -> int:
        return sum(self.counts[:batches])

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            lengths = [*r["seq_lengths"], width - n] if width > n else list(r["seq_lengths"])
            position_ids[i] = torch.cat([torch.arange(k) for k in lengths])
        labels[position_ids == 0] = IGNORE_INDEX
        self.counts.append(sum(len(r["input_ids"]) for r in rows))
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
