"""Sample packing: bin fill at `sequence_len` and effective (non-pad) training tokens/s, packed vs padded.

Data: the first N chitchat-dataset conversations (PyPI; bench/mask_speed.py's loader), rendered and masked with the
real Qwen2.5 tokenizer by `newt.masking.Masker`, truncated to `sequence_len` as the prepared stage does. Fill is
`newt.packing.best_fit_decreasing` on those lengths. Throughput: forward+backward of a small random Llama (2 layers,
hidden 128, sdpa, CPU) on the same rows, padded micro-batches (TRL's default collator) vs packed rows (TRL's
padding-free collator); token ids are folded into a 4096-entry vocabulary so the output layer does not dominate
(attention and MLP cost do not depend on the ids).

    .venv/bin/python bench/packing.py [--rows 2000] [--sequence-len 2048] [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mask_speed import load_conversations, qwen25_tokenizer

VOCAB = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2, help="padded rows per step (packed: 1 bin per step)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from newt.masking import Masker
    from newt.packing import best_fit_decreasing, fill

    tok = qwen25_tokenizer()
    convs = load_conversations(args.rows)
    out = Masker(tok, chat_template=tok.chat_template)(convs)
    cap = args.sequence_len
    rows = [(ids[:cap], labels[:cap]) for ids, labels in zip(out["input_ids"], out["labels"])]
    lengths = np.array([len(ids) for ids, _ in rows])
    t0 = time.perf_counter()
    bins = best_fit_decreasing(lengths, cap)
    t_pack = time.perf_counter() - t0
    f = fill(lengths, bins, cap)
    print(f"rows {len(rows)}, mean length {lengths.mean():.0f}, truncated {(lengths == cap).sum()}")
    print(f"packing fill: {f:.2%} at sequence_len {cap} ({len(bins)} bins for {len(rows)} rows, "
          f"best-fit-decreasing in {t_pack * 1000:.0f} ms)")

    torch.manual_seed(0)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=cap,
                                         attn_implementation="sdpa"))
    model.train()
    fold = lambda xs: [x % VOCAB if x >= 0 else x for x in xs]
    padded_c = DataCollatorForLanguageModeling(pad_token_id=0)
    packed_c = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))

    def step(batch) -> None:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    def run(make_batches) -> float:
        real, t = 0, 0.0
        for k, (batch, n_real) in enumerate(make_batches()):
            if k == args.steps + 1:
                break
            t0 = time.perf_counter()
            step(batch)
            if k:  # the first step warms up
                t += time.perf_counter() - t0
                real += n_real
        return real / t

    def padded():
        mb = args.micro_batch
        for s in range(0, len(order), mb):
            ex = [{"input_ids": fold(rows[i][0]), "labels": fold(rows[i][1])} for i in order[s : s + mb]]
            yield padded_c(ex), sum(len(e["input_ids"]) for e in ex)

    def packed():
        for b in rng.permutation(len(bins)):
            members = sorted(bins[b])
            ex = {"input_ids": [t for i in members for t in fold(rows[i][0])],
                  "labels": [t for i in members for t in fold(rows[i][1])],
                  "seq_lengths": [len(rows[i][0]) for i in members]}
            yield packed_c([ex]), len(ex["input_ids"])

    pad_rate = run(padded)
    pack_rate = run(packed)
    print(f"padded (micro batch {args.micro_batch}): {pad_rate:,.0f} real tokens/s")
    print(f"packed (1 bin of {cap}):        {pack_rate:,.0f} real tokens/s")
    print(f"packing: fill {f:.2%} at {cap}; effective tokens/s packed {pack_rate:,.0f} vs padded {pad_rate:,.0f} "
          f"= {pack_rate / pad_rate:.2f}x")


if __name__ == "__main__":
    main()
