"""Why packing did not pay at training time, and what does: three collations of the same rows, forward+backward.

Rows: train_speed.py's variable-length reversal chats (3..60 letters), masked by newt's Masker with the built-in
tokenizer; bins: `best_fit_decreasing` at `--seq`. Model: a random 4-layer hidden-256 Llama (sdpa, CPU or CUDA).
Each step takes `--batch` rows (padded) or `--batch` bins (packed):

- padded:       TRL's DataCollatorForLanguageModeling, rows right-padded to the longest of the batch;
- padding-free: TRL's padding_free=True, the whole micro batch concatenated into ONE row; through sdpa that row gets
                a block-diagonal mask and attention costs (batch × seq)²;
- bins:         newt.train.packed.BinCollator, one batch row per bin (what newt's SFT child uses on sdpa/eager).

Effective tokens/s = real (unpadded) tokens / forward+backward seconds. Collations are interleaved per repeat and
medians printed, so background load hits all three alike.

    .venv/bin/python bench/packing_collate.py [--rows 1500] [--seq 256] [--batch 8] [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1500)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from newt.masking import Masker
    from newt.models import load_tokenizer
    from newt.packing import best_fit_decreasing, fill
    from newt.train.packed import BinCollator
    from newt.synthetic import reversal_rows

    tok = load_tokenizer("builtin:tiny-llama")
    convs = [r["messages"] for r in reversal_rows(a.rows, seed=0, min_len=3, max_len=60)]
    out = Masker(tok, chat_template=tok.chat_template)(convs)
    rows = [{"input_ids": i[: a.seq], "labels": lab[: a.seq]} for i, lab in zip(out["input_ids"], out["labels"])]
    lengths = np.array([len(r["input_ids"]) for r in rows])
    bins = best_fit_decreasing(lengths, a.seq)
    packed = [{"input_ids": [t for i in sorted(b) for t in rows[i]["input_ids"]],
               "labels": [t for i in sorted(b) for t in rows[i]["labels"]],
               "seq_lengths": [len(rows[i]["input_ids"]) for i in sorted(b)]} for b in bins]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="sdpa")).to(device)
    model.train()
    pad = tok.pad_token_id
    ways = {
        "padded": (DataCollatorForLanguageModeling(pad_token_id=pad), rows),
        "padding-free": (DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True), packed),
        "bins": (BinCollator(pad), packed),
    }

    def rate(collate, data) -> float:
        real, took = 0, 0.0
        for k in range(a.steps + 1):
            examples = data[k * a.batch : (k + 1) * a.batch]
            batch = {n: v.to(device) if hasattr(v, "to") else v for n, v in collate(examples).items()}
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(**batch, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            if k:  # the first step warms up
                took += time.perf_counter() - t
                real += sum(len(e["input_ids"]) for e in examples)
        return real / took

    runs: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(a.repeats):
        for name, (collate, data) in ways.items():
            runs[name].append(rate(collate, data))
    med = {name: statistics.median(r) for name, r in runs.items()}
    print(f"{len(rows)} rows, mean length {lengths.mean():.0f}; {len(bins)} bins at {a.seq}, fill "
          f"{fill(lengths, bins, a.seq):.2%}; {a.batch} rows or bins per step, {device}")
    for name, r in runs.items():
        print(f"{name:<13} {med[name]:9.0f} real tokens/s  {med[name] / med['padded']:.2f}x padded  "
              f"(runs: {[round(x) for x in r]})")
    print(f"packing_collate: bins {med['bins'] / med['padded']:.2f}x padded, padding-free "
          f"{med['padding-free'] / med['padded']:.2f}x padded")


if __name__ == "__main__":
    main()
