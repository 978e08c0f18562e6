"""Peak resident memory of sample packing at 200 k and 2 M train rows (goal: flat, <= 1.2x between them).

Each size runs in fresh processes: one writes synthetic prepared rows (input_ids, labels, length; lengths 8-120
tokens, in Arrow files of 100,000 rows as the prepared stage's map writes them), another loads them, shuffles the
train order as `prepared` does and runs `newt.packing.pack_dataset`, then reports its peak RSS (ru_maxrss:
anonymous memory plus the file pages it kept mapped) and packing's own part of it: the peak minus what the opened
rows and the order already held (the prepared stage holds those whether it packs or not).

The opened rows' part is split into file pages and anonymous memory (/proc/self/status RssFile, RssAnon), and a
sampler thread records the peak of each while packing runs: file pages are the memory maps' (clean, shared with
the page cache; opening an Arrow stream reads every record batch's header through the map, and each fault maps
the 64 kB around it, so they grow with the number of batches the caller keeps open), anonymous memory is what
packing allocates.

    .venv/bin/python bench/packing_rss.py [--rows 200000 2000000] [--capacity 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILE_ROWS = 100_000


def make(n: int, folder: Path) -> None:
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "labels": datasets.List(datasets.Value("int32")),
                                  "length": datasets.Value("int32")})
    rng = np.random.default_rng(0)
    for k, start in enumerate(range(0, n, FILE_ROWS)):
        lengths = rng.integers(8, 121, size=min(FILE_ROWS, n - start)).astype(np.int32)
        offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
        values = pa.array((np.arange(int(lengths.sum())) % 30_000).astype(np.int32))
        table = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, values),
                          "labels": pa.ListArray.from_arrays(offsets, values), "length": pa.array(lengths)})
        with ArrowWriter(features=features, path=str(folder / f"rows-{k:05d}.arrow")) as writer:
            writer.write_table(table)
            writer.finalize()


def measure(folder: Path, capacity: int) -> None:
    import resource

    import datasets
    import numpy as np

    from newt.packing import pack_dataset

    files = sorted(folder.glob("rows-*.arrow"))
    rows = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    order = np.random.default_rng(0).permutation(len(rows))  # prepared's shuffled train order
    # The caller's part: `prepared` holds the opened rows and the order whatever packing does. Opening Arrow files
    # parses every record batch's header through the memory map, which leaves ~6 MiB resident per 100,000 rows.
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * resource.getpagesize() // 1024
    before = rss_parts()
    peaks = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for k, v in rss_parts().items():
                peaks[k] = max(peaks[k], v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = folder / "packed"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    packed, bin_order, info = pack_dataset(rows, order, capacity, seed=0, cache_dir=str(out))
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": len(rows), "bins": info["bins"], "fill": info["fill"], "seconds": round(seconds, 1),
                      "rss_inputs_kib": base, "peak_rss_kib": peak, "inputs": before, "sampled_peaks": peaks}))


def rss_parts() -> dict[str, int]:
    """Resident KiB now: file pages (memory maps) and anonymous memory."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssFile", "RssAnon"):
                out[key] = int(value.split()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--capacity", type=int, default=1024)
    parser.add_argument("--make", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return make(args.make, args.dir)
    if args.measure:
        return measure(args.dir, args.capacity)
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="newt-packing-rss-") as tmp:
            subprocess.run([sys.executable, __file__, "--make", str(n), "--dir", tmp], check=True)
            out = subprocess.run([sys.executable, __file__, "--measure", "--dir", tmp, "--capacity",
                                  str(args.capacity)], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            own = r["peak_rss_kib"] - r["rss_inputs_kib"]
            r["own_kib"] = own
            print(f"packing {r['rows']:>9,} rows: peak RSS {r['peak_rss_kib'] / 1024:,.0f} MiB, of which packing's own "
                  f"{own / 1024:,.0f} MiB (the opened rows and order: {r['rss_inputs_kib'] / 1024:,.0f} MiB); "
                  f"{r['bins']:,} bins, fill {r['fill']:.2%}, {r['seconds']} s")
            i, pk = r["inputs"], r["sampled_peaks"]
            print(f"  opened rows and order: file pages {i['RssFile'] / 1024:,.0f} MiB, anonymous "
                  f"{i['RssAnon'] / 1024:,.0f} MiB; sampled peaks while packing: file pages "
                  f"{pk['RssFile'] / 1024:,.0f} MiB, anonymous {pk['RssAnon'] / 1024:,.0f} MiB")
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        print(f"packing's own peak RSS: {hi['own_kib'] / lo['own_kib']:.2f}x from {lo['rows']:,} to {hi['rows']:,} "
              f"rows (goal <= 1.2x); whole process: {hi['peak_rss_kib'] / lo['peak_rss_kib']:.2f}x")
        grew = {k: (hi["sampled_peaks"][k] - lo["sampled_peaks"][k]) / 1024 for k in ("RssFile", "RssAnon")}
        opened = (hi["inputs"]["RssFile"] - lo["inputs"]["RssFile"]) / 1024
        print(f"whole process's growth: file pages +{grew['RssFile']:,.0f} MiB (of which the opened rows' maps "
              f"+{opened:,.0f} MiB), anonymous +{grew['RssAnon']:,.0f} MiB; anonymous peak "
              f"{hi['sampled_peaks']['RssAnon'] / lo['sampled_peaks']['RssAnon']:.2f}x")


if __name__ == "__main__":
    main()
