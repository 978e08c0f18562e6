"""The "change one knob, rerun" loop, timed as a user lives it (issue 20), in one run of this script.

Per model (`builtin:tiny-llama`, and with `--small` also `builtin:small-llama`, a random ~30 M-parameter Llama):

(a) stage overhead: the `trained` stage's wall time (as `newt run` reports it) minus the trainer's own
    `train_runtime`, after changing `learning_rate`; against the same overhead of the anchor, a plain
    `accelerate launch` of a plain TRL script (bench/train_speed.py --plain) on the same prepared rows; and
    the overhead of one more change with the warm training process switched off (NEWT_WARM=0: a fresh Python);
(b) first step: seconds from starting that `newt run` to its first logged training step;
(c) no-op: wall time of `newt run` when every stage is a cache hit;
(d) preview: wall time of `newt preview` (prepared is committed);
(e) evaluation, per variant: seconds per 100 held-out rows of the stage's scoring (`newt.evaluate.score`: loss +
    greedy answers), and the generation of the answers alone in rows/s: `newt.generate` (the stage's), one
    `model.generate` per row (the unbatched reference) and `model.generate` on left-padded batches of 32, with
    whether the batched answers equal the unbatched ones token for token; E = batched / unbatched generation
    rows/s (the issue's goal: >= 3x with identical outputs), median over the variants.

`newt run` and `newt preview` run as the CLI in fresh processes with a persistent DAGSTER_HOME, like a user's.
The machine may be shared: run it twice and compare (repeats of the short timings keep their median).
The last line (tiny model) reads
`iteration: overhead X s = R x plain, first step Y s, no-op Z s, preview W s, eval E x unbatched`.

    .venv/bin/python bench/iteration.py [--small] [--repeats 3]

NEWT_TREE=/path/to/checkout times another checkout of newt with this script (before/after comparisons).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("NEWT_TREE") or HERE.parent).resolve()
sys.path[:0] = [str(ROOT), str(HERE)]

RECIPE = """\
base_model: {model}
datasets:
  - path: {data}
sequence_len: 64
val_set_size: 100
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_modules: all-linear
micro_batch_size: 8
max_steps: {steps}
learning_rate: {lr}
lr_scheduler: constant
logging_steps: 1
save_steps: 100000
eval:
  max_samples: 100
  max_new_tokens: 12
"""


def env(tmp: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(ROOT), NEWT_STORE=str(tmp / "store"), DAGSTER_HOME=str(tmp / "home"),
             NEWT_CACHE_DIR=str(tmp / "cache"), TOKENIZERS_PARALLELISM="false", NO_COLOR="1")
    return e


def newt(tmp: Path, *args: str, extra: dict[str, str] | None = None) -> tuple[float, float | None, str]:
    """Run the CLI; (wall s, s to the first `trained: step` line or None, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "newt.cli", *args], env={**env(tmp), **(extra or {})},
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=tmp)
    first, lines = None, []
    for line in proc.stderr:
        lines.append(line)
        if first is None and re.search(r"trained: step \d+", line):
            first = time.perf_counter() - start
    rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"newt {' '.join(args)} failed ({rc}):\n{''.join(lines)[-3000:]}")
    return wall, first, "".join(lines)


def dagster_floor(tmp: Path) -> float:
    """Wall s of a Python that only imports dagster and opens the persistent instance: what any `newt run` that
    records to the instance pays before doing anything (the no-op run's floor)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"], env=env(tmp),
                   check=True, cwd=tmp)
    return time.perf_counter() - start


def stage_seconds(stderr: str, stage: str) -> float:
    m = re.search(rf"✓ {stage}\s+(?:miss|hit)\s+([\d.]+) s", stderr)
    if not m:
        raise SystemExit(f"no `✓ {stage}` line in:\n{stderr[-3000:]}")
    return float(m.group(1))


def trained_metrics(tmp: Path, recipe_file: Path) -> dict:
    from newt.cache import Store
    from newt.config import load_recipe
    from newt.pipeline import plan

    recipe = load_recipe(recipe_file)
    key = plan(recipe, ("trained",))["trained"].key
    return json.loads((Store(str(tmp / "store")).local_path("trained", key) / "metrics.json").read_text())


def prepared_folder(tmp: Path, recipe_file: Path) -> Path:
    from newt.cache import Store
    from newt.config import load_recipe
    from newt.pipeline import plan

    key = plan(load_recipe(recipe_file), ("prepared",))["prepared"].key
    return Store(str(tmp / "store")).local_path("prepared", key)


def plain_overhead(tmp: Path, model: str, prepared: Path, steps: int, lr: float, out: Path) -> tuple[float, float]:
    """(wall s, train_runtime s) of the anchor: `accelerate launch` of the plain TRL script."""
    from newt.models import resolve

    out.mkdir(parents=True, exist_ok=True)
    cpu = [] if cuda() else ["--cpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *cpu, "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(HERE / "train_speed.py"), "--plain",
           "--model", resolve(model), "--data", str(prepared), "--out", str(out), "--steps", str(steps),
           "--batch", "8", "--lr", str(lr), "--seed", "42"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env(tmp), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "plain.json").read_text())["train_runtime_s"]


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def one_row_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """The unbatched reference: one `model.generate` per prompt (no padding), greedy; each answer's new tokens up to
    and including the first EOS, as `newt.generate` returns them."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for prompt in prompts:
            p = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
            new = model.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)[0, p.shape[1]:]
            ids = new.tolist()
            out.append(ids[: ids.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in ids else ids)
    return out


def generate_batched_32(model, tokenizer, prompts: list[str], max_new_tokens: int) -> None:
    """What the stage ran before `newt.generate`: `model.generate` on left-padded batches of 32 prompts."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for start in range(0, len(prompts), 32):
            ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + 32]]
            width = max(len(i) for i in ids)
            batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
            model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)


def eval_times(tmp: Path, recipe_file: Path, repeats: int) -> dict[str, dict]:
    """Per variant, medians of `repeats` interleaved runs on the held-out rows (at most 100): `stage_s` (seconds
    per 100 rows of the stage's scoring, loss + answers), and the answers' generation alone in rows/s: `rows_s`
    (`newt.generate`, what the stage runs), `alone_rows_s` (one `model.generate` per row: the unbatched
    reference), `batched32_rows_s` (`model.generate` on batches of 32); `identical`: whether `newt.generate`'s
    answers equal the unbatched ones token for token."""
    from newt import templates
    from newt.cache import Store
    from newt.config import load_recipe
    from newt.evaluate import answer_prompt, load_variant, score
    from newt.generate import generate_answers
    from newt.pipeline import StageRun, plan, upstream_of
    from newt.prepare import load_prepared

    recipe = load_recipe(recipe_file)
    store = Store(str(tmp / "store"))
    keys = plan(recipe)
    upstream = {u: store.local_path(keys[u].stage, keys[u].key) for u in upstream_of(recipe, "evaluation")}
    run = StageRun(recipe, "evaluation", keys["evaluation"].key, tmp / "scratch", upstream)
    held = load_prepared(upstream["prepared"], "validation")
    rows = [held[i] for i in range(min(len(held), 100))]
    n, budget = len(rows), recipe.eval.max_new_tokens
    out = {}
    for variant in recipe.eval.models:
        model, tok = load_variant(variant, run)
        template = templates.template_for(recipe, tok)
        prompts = [answer_prompt(r, tok, template)[0] for r in rows]
        score(model, tok, rows[:8], recipe, template)  # warm-up
        t = {"stage": [], "new": [], "alone": [], "b32": []}
        for _ in range(repeats):  # interleaved, so background load hits all alike
            start = time.perf_counter()
            score(model, tok, rows, recipe, template)
            t["stage"].append((time.perf_counter() - start) * 100 / n)
            start = time.perf_counter()
            answers = generate_answers(model, tok, prompts, budget)
            t["new"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            reference = one_row_at_a_time(model, tok, prompts, budget)
            t["alone"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            generate_batched_32(model, tok, prompts, budget)
            t["b32"].append(n / (time.perf_counter() - start))
        tokens = sum(len(a) for a in answers)
        out[variant] = {"stage_s": statistics.median(t["stage"]), "rows_s": statistics.median(t["new"]),
                        "alone_rows_s": statistics.median(t["alone"]), "batched32_rows_s": statistics.median(t["b32"]),
                        "identical": answers == reference, "new_tokens_per_row": tokens / n}
    return out


def bench_model(model: str, tmp: Path, repeats: int, steps: int) -> dict:
    from newt.synthetic import write_reversal_jsonl

    os.environ["NEWT_CACHE_DIR"] = str(tmp / "cache")  # this process's plan() and the CLI's share the built-ins
    data = write_reversal_jsonl(tmp / "data" / "reversal.jsonl", n=600)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", tmp / "home" / "dagster.yaml")
    recipe_file = tmp / "bench.yaml"
    recipe_file.write_text(RECIPE.format(model=model, data=data, steps=steps, lr=0.0002))
    newt(tmp, "run", str(recipe_file))  # first run: builds everything (and the built-in model)
    recipe_file.write_text(RECIPE.format(model=model, data=data, steps=steps, lr=0.0003))  # the knob
    wall, first, err = newt(tmp, "run", str(recipe_file))
    trained = stage_seconds(err, "trained")
    runtime = trained_metrics(tmp, recipe_file)["train_runtime_s"]
    # The same knob change with every launch a fresh process (NEWT_WARM=0, newt/train/warm.py), for comparison;
    # then back to the recipe the rest of the bench uses.
    recipe_file.write_text(RECIPE.format(model=model, data=data, steps=steps, lr=0.0004))
    fresh_err = newt(tmp, "run", str(recipe_file), "--stages", "trained", extra={"NEWT_WARM": "0"})[2]
    fresh = stage_seconds(fresh_err, "trained") - trained_metrics(tmp, recipe_file)["train_runtime_s"]
    recipe_file.write_text(RECIPE.format(model=model, data=data, steps=steps, lr=0.0003))
    prepared = prepared_folder(tmp, recipe_file)
    plain_wall, plain_runtime = plain_overhead(tmp, model, prepared, steps, 0.0003, tmp / "plain")
    noops, floors = [], []
    for _ in range(repeats):  # interleaved: the floor under the same load as the run
        noops.append(newt(tmp, "run", str(recipe_file))[0])
        floors.append(dagster_floor(tmp))
    noop, floor = statistics.median(noops), statistics.median(floors)
    preview = statistics.median(newt(tmp, "preview", str(recipe_file), "--no-color")[0] for _ in range(repeats))
    evals = eval_times(tmp, recipe_file, repeats)
    r = {"model": model, "trained_s": trained, "train_runtime_s": runtime, "overhead_s": trained - runtime,
         "plain_wall_s": plain_wall, "plain_runtime_s": plain_runtime, "plain_overhead_s": plain_wall - plain_runtime,
         "fresh_overhead_s": fresh, "first_step_s": first, "rerun_wall_s": wall, "noop_s": noop, "noop_floor_s": floor, "preview_s": preview,
         "eval": evals}
    print(f"model {model}: trained stage {trained:.1f} s = train_runtime {runtime:.1f} s + overhead "
          f"{r['overhead_s']:.1f} s; plain accelerate+TRL {plain_wall:.1f} s = {plain_runtime:.1f} s + overhead "
          f"{r['plain_overhead_s']:.1f} s")
    print(f"  the same knob change with a fresh training process (NEWT_WARM=0): overhead {fresh:.1f} s")
    print(f"  rerun after a learning_rate change: {wall:.1f} s wall, first logged step at {first:.1f} s")
    print(f"  no-op newt run {noop:.2f} s (Python + import dagster + the instance alone: {floor:.2f} s), "
          f"newt preview {preview:.2f} s (medians of {repeats})")
    for variant, e in evals.items():
        print(f"  evaluation {variant}: stage {e['stage_s']:.2f} s per 100 rows; generation {e['rows_s']:.0f} rows/s "
              f"vs one row at a time {e['alone_rows_s']:.0f} rows/s ({e['rows_s'] / e['alone_rows_s']:.1f}x) and "
              f"model.generate in batches of 32 {e['batched32_rows_s']:.0f} rows/s "
              f"({e['rows_s'] / e['batched32_rows_s']:.1f}x); {e['new_tokens_per_row']:.1f} new tokens per row; "
              f"answers {'identical' if e['identical'] else 'DIFFER'}")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="also time builtin:small-llama (~30M parameters)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = Path(tempfile.mkdtemp(prefix="newt-iteration-"))
    print(f"newt tree {ROOT}; device {'cuda' if cuda() else 'cpu'}; load average {os.getloadavg()[0]:.1f}")
    try:
        if a.small:
            bench_model("builtin:small-llama", tmp / "small", a.repeats, a.steps)
        t = bench_model("builtin:tiny-llama", tmp / "tiny", a.repeats, a.steps)
        # The goal: generation rows/s batched vs unbatched (identical answers), median over the variants.
        e = statistics.median(v["rows_s"] / v["alone_rows_s"] for v in t["eval"].values())
        if not all(v["identical"] for v in t["eval"].values()):
            print("  WARNING: batched answers differ from the one-row-at-a-time answers")
        print(f"iteration: overhead {t['overhead_s']:.1f} s = {t['overhead_s'] / t['plain_overhead_s']:.2f} x plain, "
              f"first step {t['first_step_s']:.1f} s, no-op {t['noop_s']:.1f} s, preview {t['preview_s']:.1f} s, "
              f"eval {e:.1f} x unbatched")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
