"""Training throughput: newt's SFT child against a plain TRL script, and packed against unpacked rows.

1. newt vs plain TRL (goal: newt ≥ 0.95× the plain script's tokens/s). Both run under `accelerate launch` in this
   run, on the same model, the same prepared rows (input_ids + labels from newt's prepared stage), the same batch,
   LoRA settings, optimizer and seed. The plain script is `--plain` mode of this file: a bare `SFTTrainer` with
   nothing of newt's (no Pipes reporter, no metrics callback, no checkpoint logic).
2. Packed vs unpacked (`sample_packing`, goal ≥ 1.2×): effective tokens/s = real (unpadded) tokens trained per
   second, on variable-length rows. Both train the same examples: the packed run takes `--steps` × bins/rows steps
   (each of its steps holds about rows/bins examples), so it does not train three times the data of the other.

What is timed. On a GPU: TRL's `train_runtime` (the trainer's own wall clock; start-up excluded). On a CPU the wall
clock is the load of whoever shares the machine (the same run took 112 s and 37 s as the load fell), so the stated
rate there is per CPU-second of the training processes, the child pinned to one thread (`OMP_NUM_THREADS=1`,
which accelerate passes on): every run is timed by its processes' user+system time (`getrusage(RUSAGE_CHILDREN)`
around the launch), and start-up (imports, model and data loading, saving) is taken out by a `--short`-step run of
the same side just before each long one: rate = (tokens(long) − tokens(short)) / (cpu(long) − cpu(short)), the
steps in between. Contention moves CPU time far less than wall time (the same 60-step plain run: 42 and 27 CPU-s,
wall rates 113 and 1,436 tokens/s, as the load fell from 14 to 4), but it does move it, so only ratios inside a
repeat are stated; the wall rates are printed beside them.

Runs are interleaved (newt, plain, packed, newt, ...) so what load does to CPU time (shared caches) hits every
side alike; each run is printed as it ends, then each side's median with all its runs, a ratio is the median of the
per-repeat ratios, and the script says whether the first and second half of the repeats agree within 5 %. The
unpacked side of 2. is the newt side of 1. (the same recipe and rows).

    .venv/bin/python bench/train_speed.py [--model random-small] [--steps 120] [--short 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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



def launched(cmd: list[str]) -> float:
    """Run `cmd` (accelerate and the training child under it) and return the CPU seconds its processes used.

    RUSAGE_CHILDREN counts every descendant once it has been waited for: accelerate waits for its child, we wait
    for accelerate."""
    from newt.train import child_env

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    before = cpu()
    subprocess.run(cmd, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cpu() - before


def run_newt(recipe, steps: int, prepared: Path, out: Path) -> dict:
    from newt.models import resolve
    from newt.train import accelerate_command, resolved_recipe

    recipe = recipe.model_copy(update={"max_steps": steps})
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(resolved_recipe(recipe)))
    cpu = launched(accelerate_command(recipe, ["--recipe", str(out / "recipe.json"), "--data", str(prepared),
                                               "--output", str(out), "--base-model", resolve(recipe.base_model)]))
    m = json.loads((out / "metrics.json").read_text())
    return {"num_tokens": m["num_tokens"], "train_runtime_s": m["train_runtime_s"], "cpu_s": cpu}


def run_plain(model: str, steps: int, prepared: Path, out: Path, batch: int, lr: float, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    device = [] if _cuda() else ["--cpu"]
    cpu = launched([sys.executable, "-m", "accelerate.commands.launch", *device, "--num_processes", "1",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    str(Path(__file__).resolve()), "--plain", "--model", model, "--data", str(prepared), "--out",
                    str(out), "--steps", str(steps), "--batch", str(batch), "--lr", str(lr), "--seed", str(seed)])
    return {**json.loads((out / "plain.json").read_text()), "cpu_s": cpu}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class Side:
    """One way of training (newt, plain, packed): its runs, and its rates per run (tokens/s of wall clock, and on
    a CPU tokens per CPU-second of the steps between the short run and a long one)."""

    def __init__(self, label: str, run, steps: int, short: int, cpu: bool):
        self.label, self.run, self.steps, self.short_steps, self.cpu = label, run, steps, short, cpu
        self.wall: list[float] = []
        self.rate: list[float] = []  # what is stated: per CPU-second on a CPU, per wall second on a GPU

    def repeat(self, i: int) -> None:
        # The short run is repeated beside each long one: CPU time is far steadier than wall time under load, but
        # not constant (the same 60-step run took 42 and 27 CPU-s at load 14 and 4: shared caches), so a start-up
        # measured once, early, under other load, mis-states every later run.
        if self.cpu:
            self.short = self.run(self.short_steps, f"short{i}")
            print(f"  {self.label} short run {i}: {self.short_steps} steps, {self.short['num_tokens']} tokens, "
                  f"{self.short['cpu_s']:.1f} CPU-s", flush=True)  # each run printed as it ends
        r = self.run(self.steps, f"long{i}")
        self.wall.append(r["num_tokens"] / r["train_runtime_s"])
        if self.cpu:
            tokens, seconds = r["num_tokens"] - self.short["num_tokens"], r["cpu_s"] - self.short["cpu_s"]
            if tokens <= 0 or seconds <= 0:
                raise SystemExit(f"{self.label}: the long run ({self.steps} steps) must train more than the short "
                                 "one; raise --steps or lower --short")
            self.rate.append(tokens / seconds)
        else:
            self.rate.append(self.wall[-1])
        per = "CPU-s" if self.cpu else "s"
        print(f"  {self.label} run {i}: {self.steps} steps, {r['num_tokens']} tokens, {r['cpu_s']:.1f} CPU-s, "
              f"{r['train_runtime_s']:.1f} s train_runtime -> {self.rate[-1]:.1f} tokens/{per}", flush=True)

    def line(self, unit: str) -> str:
        per = "CPU-second" if self.cpu else "second"
        text = (f"{self.label:<14} {statistics.median(self.rate):8.1f} {unit}/{per}   "
                f"(runs: {[round(x, 1) for x in self.rate]})")
        if self.cpu:
            text += f"; wall {statistics.median(self.wall):.1f}/s (runs: {[round(x, 1) for x in self.wall]})"
        return text


def compare(a: Side, b: Side, unit: str) -> float:
    """Print both sides, the per-repeat ratios a/b and whether the halves of the repeats agree within 5 %; return
    the median ratio."""
    ratios = [x / y for x, y in zip(a.rate, b.rate)]
    half = max(len(ratios) // 2, 1)
    first, second = statistics.median(ratios[:half]), statistics.median(ratios[half:] or ratios[:half])
    agree = abs(first - second) / max(first, second) <= 0.05
    print(a.line(unit))
    print(b.line(unit))
    print(f"  ratios {a.label}/{b.label} per repeat: {[round(r, 3) for r in ratios]}; halves {first:.3f} vs "
          f"{second:.3f}: {'agree within 5 %' if agree else 'DO NOT agree within 5 % (more --repeats or --steps)'}")
    return statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small",
                   help="a model name/path, or random-small: a random 4-layer hidden-256 Llama (≈3M parameters, "
                        "enough compute per step to time on a CPU; the 140k-parameter builtin is too small)")
    p.add_argument("--steps", type=int, default=120,
                   help="optimizer steps of an unpacked run (the packed run takes steps × bins/rows: at 60 its timed "
                        "part was 17 steps, short enough for a few CPU-seconds of start-up noise to matter)")
    p.add_argument("--short", type=int, default=10, help="steps of the start-up run subtracted on a CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per side; medians are reported")
    p.add_argument("--no-packing", action="store_true", help="skip the packed vs unpacked comparison")
    p.add_argument("--no-plain", action="store_true", help="skip the newt vs plain TRL comparison")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cpu = not _cuda()
    if cpu:
        os.environ["OMP_NUM_THREADS"] = "1"  # CPU time = work: no spinning thread pool under contention
    import datasets

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
    packing = not a.no_packing and "sample_packing" in Recipe.model_fields
    if packing:
        packed_recipe, packed = prepare(base + "sample_packing: true\n", tmp / "packed")

        def train_rows(folder: Path) -> int:
            return datasets.load_from_disk(str(folder / "data"))["train"].num_rows

        rows, bins = train_rows(prepared), train_rows(packed)
        # Same examples on both sides, short runs included: steps of bins = steps of rows × bins/rows.
        packed_short = max(round(a.short * bins / rows), 1)
        packed_steps = max(round(a.steps * bins / rows), packed_short + 1)
    print(f"model {a.model}, {a.steps} steps × batch {a.batch}"
          f"{f' ({packed_steps} steps of bins: {rows} rows in {bins} bins)' if packing else ''}, sequence_len "
          f"{a.seq}, device {'cpu (rates per CPU-second, one thread)' if cpu else 'cuda'}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    # Per repeat, each side in turn: its short run, then its long one.
    sides = {"newt": Side("newt SFT" if not a.no_plain else "unpacked",
                          lambda n, tag: run_newt(recipe, n, prepared, tmp / f"newt-{tag}"), a.steps, a.short, cpu)}
    if not a.no_plain:
        sides["plain"] = Side("plain TRL SFT", lambda n, tag: run_plain(resolve(a.model), n, prepared,
                                                                        tmp / f"plain-{tag}", a.batch, 2e-4, 42),
                              a.steps, a.short, cpu)
    if packing:
        sides["packed"] = Side("packed", lambda n, tag: run_newt(packed_recipe, n, packed, tmp / f"packed-{tag}"),
                               packed_steps, packed_short, cpu)
    for i in range(a.repeats):
        for side in sides.values():
            side.repeat(i)
    if not a.no_plain:
        ratio = compare(sides["newt"], sides["plain"], "tokens")
        print(f"ratio newt/plain = {ratio:.3f}  (median of repeats; goal ≥ 0.95)")
    if packing:
        sides["newt"].label = "unpacked"
        speedup = compare(sides["packed"], sides["newt"], "real tokens")
        print(f"packing: effective tokens/s packed/unpacked = {speedup:.2f}x  (median of repeats; goal ≥ 1.2)")
    elif not a.no_packing:
        print("packed vs unpacked: skipped (this newt has no sample_packing key)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        plain_main(sys.argv[2:])
    else:
        main()
