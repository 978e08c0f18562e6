"""Training throughput: newt's SFT child against a plain TRL script, and packed against unpacked rows.

1. newt vs plain TRL (goal: newt ≥ 0.95× the plain script's tokens/s). Both run under `accelerate launch` in this
   run, on the same model, the same prepared rows (input_ids + labels from newt's prepared stage), the same batch,
   LoRA settings, optimizer and seed. The plain script is `--plain` mode of this file: a bare `SFTTrainer` with
   nothing of newt's (no Pipes reporter, no metrics callback, no checkpoint logic).
2. Packed vs unpacked (`sample_packing`): effective tokens/s = real (unpadded) tokens trained per second, on
   variable-length rows, same number of optimizer steps.

Tokens/s = TRL's logged `num_tokens` (real tokens seen) / `train_runtime` (the trainer's own clock: model loading
and process start-up are excluded for both sides alike).

Runs are interleaved (newt, plain, newt, plain, ...; packed, unpacked, ...) so background load hits both sides
alike; each side's median is printed with every run, and the ratio is the median of the per-pair ratios. The two
halves of the pairs must agree within 5 % for a ratio to be worth stating: the script says whether they do.

    .venv/bin/python bench/train_speed.py [--model builtin:tiny-llama] [--steps 120] [--repeats 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_main(argv: list[str]) -> None:
    """The baseline: a plain TRL SFT script on the same pre-tokenized rows."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    p = argparse.ArgumentParser()
    for name in ("--model", "--data", "--out", "--steps", "--batch", "--lr", "--seed"):
        p.add_argument(name)
    a = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    train = datasets.load_from_disk(str(Path(a.data) / "data"))["train"].select_columns(["input_ids", "labels"])
    args = SFTConfig(output_dir=a.out, per_device_train_batch_size=int(a.batch), max_steps=int(a.steps),
                     learning_rate=float(a.lr), lr_scheduler_type="constant", optim="adamw_torch", seed=int(a.seed), data_seed=int(a.seed), logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
                     gradient_checkpointing=False, disable_tqdm=True, dataset_kwargs={"skip_prepare_dataset": True})
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=lora)
    result = trainer.train()
    if trainer.is_world_process_zero():
        tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
        out = {"num_tokens": int(tokens), "train_runtime_s": float(result.metrics["train_runtime"])}
        Path(a.out, "plain.json").write_text(json.dumps(out))


def variable_rows(path: Path, n: int, seed: int = 0) -> Path:
    """Reversal conversations of 3..60 letters: lengths vary ~10x, as in real chat data."""
    from newt.synthetic import reversal_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in reversal_rows(n, seed=seed, min_len=3, max_len=60):
            f.write(json.dumps(row) + "\n")
    return path


def prepare(recipe_text: str, folder: Path) -> tuple[object, Path]:
    from newt.cache import Store
    from newt.config import parse_recipe
    from newt.pipeline import plan, run_stage

    recipe = parse_recipe(recipe_text, name="bench")
    store = Store(str(folder / "store"))
    keys = plan(recipe, ("prepared",))
    for stage in ("dataset", "prepared"):
        run_stage(recipe, stage, store, keys=keys, log=lambda m: None)
    return recipe, store.local_path("prepared", keys["prepared"].key)


def run_newt(recipe, prepared: Path, out: Path) -> dict:
    from newt.models import resolve
    from newt.train import accelerate_command, child_env, resolved_recipe

    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(resolved_recipe(recipe)))
    cmd = accelerate_command(recipe, ["--recipe", str(out / "recipe.json"), "--data", str(prepared), "--output",
                                      str(out), "--base-model", resolve(recipe.base_model)])
    subprocess.run(cmd, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    return {"num_tokens": m["num_tokens"], "train_runtime_s": m["train_runtime_s"]}


def run_plain(model: str, prepared: Path, out: Path, steps: int, batch: int, lr: float, seed: int) -> dict:
    from newt.train import child_env

    out.mkdir(parents=True, exist_ok=True)
    cpu = [] if _cuda() else ["--cpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *cpu, "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).resolve()), "--plain",
           "--model", model, "--data", str(prepared), "--out", str(out), "--steps", str(steps), "--batch", str(batch),
           "--lr", str(lr), "--seed", str(seed)]
    subprocess.run(cmd, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "plain.json").read_text())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def tps(r: dict) -> float:
    return r["num_tokens"] / r["train_runtime_s"]


def interleaved(label_a: str, run_a, label_b: str, run_b, repeats: int, unit: str) -> float:
    """Run a, b, a, b, ... (background load then hits both sides alike) and print each side's median tokens/s, the
    per-pair ratios a/b and whether the first and second half of the pairs agree within 5 %. Returns the median
    ratio."""
    import statistics

    a, b = [], []
    for i in range(repeats):
        a.append(tps(run_a(i)))
        b.append(tps(run_b(i)))
    ratios = [x / y for x, y in zip(a, b)]
    half = max(len(ratios) // 2, 1)
    first, second = statistics.median(ratios[:half]), statistics.median(ratios[half:] or ratios[:half])
    agree = abs(first - second) / max(first, second) <= 0.05
    print(f"{label_a:<14} {statistics.median(a):10.1f} {unit}   (runs: {[round(x, 1) for x in a]})")
    print(f"{label_b:<14} {statistics.median(b):10.1f} {unit}   (runs: {[round(x, 1) for x in b]})")
    print(f"  pair ratios {label_a}/{label_b}: {[round(r, 3) for r in ratios]}; halves {first:.3f} vs {second:.3f}: "
          f"{'agree within 5 %' if agree else 'DO NOT agree within 5 % (noisy machine: more --repeats or --steps)'}")
    return statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small",
                   help="a model name/path, or random-small: a random 4-layer hidden-256 Llama (≈3M parameters, "
                        "enough compute per step to time on a CPU; the 140k-parameter builtin is too small)")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per run (40 were too few to agree)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=4, help="interleaved runs per side; medians are reported")
    p.add_argument("--no-packing", action="store_true", help="skip the packed vs unpacked comparison")
    p.add_argument("--no-plain", action="store_true", help="skip the newt vs plain TRL comparison")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from newt.config import Recipe
    from newt.models import resolve

    tmp = Path(tempfile.mkdtemp(prefix="newt-bench-"))
    if a.model == "random-small":
        sys.path.insert(0, str(Path(__file__).parent))
        from gpu_smoke import random_llama

        a.model = str(random_llama(tmp / "model", hidden=256, layers=4, intermediate=768))
    data = variable_rows(tmp / "rows.jsonl", a.rows)
    base = (f"base_model: {a.model}\ndatasets:\n  - path: {data}\nsequence_len: {a.seq}\nadapter: lora\nlora_r: 8\n"
            f"lora_alpha: 16\nmicro_batch_size: {a.batch}\nmax_steps: {a.steps}\nlearning_rate: 0.0002\n"
            f"lr_scheduler: constant\nlogging_steps: 1\nsave_steps: 100000\n")
    recipe, prepared = prepare(base, tmp / "unpacked")
    print(f"model {a.model}, {a.steps} steps × batch {a.batch}, sequence_len {a.seq}, device "
          f"{'cuda' if _cuda() else 'cpu'}, load average {os.getloadavg()[0]:.1f}")
    if not a.no_plain:
        ratio = interleaved("newt SFT", lambda i: run_newt(recipe, prepared, tmp / f"newt{i}"), "plain TRL SFT",
                            lambda i: run_plain(resolve(a.model), prepared, tmp / f"plain{i}", a.steps, a.batch,
                                                2e-4, 42), a.repeats, "tokens/s")
        print(f"ratio newt/plain = {ratio:.3f}  (median of pairs; goal ≥ 0.95)")

    if a.no_packing:
        return
    if "sample_packing" not in Recipe.model_fields:
        print("packed vs unpacked: skipped (this newt has no sample_packing key)")
        return
    packed_recipe, packed = prepare(base + "sample_packing: true\n", tmp / "packed")
    speedup = interleaved("packed", lambda i: run_newt(packed_recipe, packed, tmp / f"p{i}"), "unpacked",
                          lambda i: run_newt(recipe, prepared, tmp / f"u{i}"), a.repeats,
                          "effective tokens/s (real tokens, padding excluded)")
    print(f"packing: effective tokens/s packed/unpacked = {speedup:.2f}x  (median of pairs; goal ≥ 1.2)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        plain_main(sys.argv[2:])
    else:
        main()
