"""GPU smoke test (≤ 10 minutes on one H100-class GPU; CI never runs it).

Through newt's own pipeline (`run_stage`: dataset → prepared → trained, children under `accelerate launch`):

1. LoRA SFT on a randomly initialised ≈100M-parameter Llama-shaped model (hidden 768, 12 layers) with
   `mixed_precision: bf16`, `bf16: true`, `attn_implementation: flash_attention_2` and `sample_packing: true`;
2. a QLoRA run (bitsandbytes nf4 base) of a few steps;
3. a DPO run of a few steps;

printing tokens/s for each and a Markdown table to paste into docs/gpu.md.

    pip install -e '.[gpu]'            # flash-attn, built against the installed CUDA torch
    python bench/gpu_smoke.py [--attn sdpa] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def random_llama(folder: Path, hidden: int = 768, layers: int = 12, intermediate: int = 2560) -> Path:
    """≈100M parameters: 12 layers × (4·768² attention + 3·768·2560 MLP) ≈ 99M + embeddings, random init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from newt.models import load_tokenizer

    tok = load_tokenizer("builtin:tiny-llama")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_rows(path: Path, n: int, *, pairs: bool = False) -> Path:
    """Reversal conversations of 20..600 letters: variable lengths, so packing has something to do."""
    from newt.synthetic import reversal_rows

    with path.open("w") as f:
        for row in reversal_rows(n, seed=0, min_len=20, max_len=600):
            if pairs:
                word = row["messages"][0]["content"]
                row = {"prompt": row["messages"][:1], "chosen": word[::-1], "rejected": word}
            f.write(json.dumps(row) + "\n")
    return path


def run(name: str, recipe_text: str, tmp: Path) -> dict:
    from newt.cache import Store
    from newt.config import parse_recipe
    from newt.pipeline import plan, run_stage

    recipe = parse_recipe(recipe_text, name=name)
    store = Store(str(tmp / "store"))
    keys = plan(recipe)
    start = time.perf_counter()
    for stage in ("dataset", "prepared", "trained"):
        outcome = run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    meta = dict(outcome.metadata)
    meta["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"{name}: {meta.get('tokens_per_second')} tokens/s, final loss {meta.get('final_loss')}, "
          f"{meta.get('global_step')} steps, wall {meta['wall_s']} s", flush=True)
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", default="flash_attention_2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke.py needs a CUDA GPU; CI and CPU machines use tests/test_train*.py instead")
    tmp = Path(tempfile.mkdtemp(prefix="newt-gpu-smoke-"))
    model = random_llama(tmp / "model")
    sft_rows = write_rows(tmp / "sft.jsonl", 4000)
    common = (f"base_model: {model}\nsequence_len: 2048\nadapter: lora\nlora_r: 16\nlora_alpha: 32\n"
              f"learning_rate: 0.0003\nlogging_steps: 5\nsave_steps: 1000\nmixed_precision: bf16\nbf16: true\n"
              f"attn_implementation: {a.attn}\nmicro_batch_size: {a.batch}\n")
    results = {
        "lora_sft_packed": run("lora_sft_packed", common + f"datasets: [{{path: {sft_rows}}}]\n"
                               f"sample_packing: true\nmax_steps: {a.steps}\n", tmp),
        "qlora_sft": run("qlora_sft", common.replace("adapter: lora", "adapter: qlora")
                         + f"datasets: [{{path: {sft_rows}}}]\nmax_steps: 10\n", tmp),
        "dpo": run("dpo", common + f"datasets: [{{path: {write_rows(tmp / 'pairs.jsonl', 512, pairs=True)}}}]\n"
                   "rl: dpo\nmax_steps: 10\n", tmp),
    }
    gpu = torch.cuda.get_device_name(0)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    print(f"\n| run | tokens/s | final loss | steps | wall s |  ({gpu}, torch {torch.__version__}, "
          f"attn {a.attn}, commit {sha.strip() or '?'})\n|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m.get('tokens_per_second')} | {m.get('final_loss')} | {m.get('global_step')} | "
              f"{m['wall_s']} |")


if __name__ == "__main__":
    main()
