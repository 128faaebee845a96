"""Beyond the floor: re-extraction from the activation cache, and the thread-count study.

Part 1 (cache). Studies tune method settings (denoising share, hold-out, emotion subsets)
far more often than they change the model or the texts. With ``extract(..., cache=...)`` the
first run stores each text's pooled means; later runs with other settings read them instead
of running the model. Measured side by side on the same stories, rounds interleaved:

- ``floor``: a bare backbone forward over every layer (what any re-extraction without a
  cache costs at the least);
- ``cold``: ``extract`` with an empty cache (forward + writing the shards);
- ``warm``: ``extract`` with other settings (``neutral_variance=0``) from a full cache.

Part 2 (threads). The same floor pass at each torch intra-op thread count up to the cores
present, one batch at a time or as that many single-threaded workers side by side, at
several batch sizes, to justify the defaults (two workers, batch 4 on a CPU).

    python benchmarks/bench_reextract.py [--stories 48] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import torch
from floor import floor_pass

from emovec.corpus import Corpus, load_corpus
from emovec.extraction import extract
from emovec.models import load_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cache_study(lm, corpus: Corpus, rounds: int) -> dict:
    ids = [lm.encode(s["text"])[:512] for s in corpus.stories] + [
        lm.encode(t)[:512] for t in corpus.neutral_texts()
    ]
    tokens = sum(map(len, ids))
    times: dict[str, list[float]] = {"floor": [], "cold": [], "warm": []}
    for _ in range(rounds):
        folder = tempfile.mkdtemp(prefix="emovec-bench-cache-")
        try:
            times["floor"].append(timed(lambda: floor_pass(lm, ids, 4, lm.n_layers - 1)))
            times["cold"].append(timed(lambda f=folder: extract(lm, corpus, cache=f)))
            times["warm"].append(
                timed(lambda f=folder: extract(lm, corpus, cache=f, neutral_variance=0.0))
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    rows = {}
    for name, values in times.items():
        seconds = statistics.median(values)
        rows[name] = {"seconds": seconds, "tokens_per_s": tokens / seconds}
    floor = rows["floor"]["tokens_per_s"]
    for row in rows.values():
        row["x_floor"] = row["tokens_per_s"] / floor
    return {"tokens": tokens, "texts": len(ids), "rows": rows}


def thread_study(lm, corpus: Corpus, rounds: int) -> dict:
    ids = [lm.encode(s["text"])[:512] for s in corpus.stories]
    tokens = sum(map(len, ids))
    before = torch.get_num_threads()
    threads = sorted({1, *range(2, (os.cpu_count() or 1) + 1)})
    # (threads, workers): one batch at a time with n threads, or n single-threaded workers
    plans = [(n, 1) for n in threads] + [(n, n) for n in threads if n > 1]
    results = []
    try:
        for _ in range(rounds):
            for n, workers in plans:
                torch.set_num_threads(n)
                for batch_size in (4, 8, 16, 32):
                    seconds = timed(
                        lambda b=batch_size, w=workers: floor_pass(lm, ids, b, lm.n_layers - 1, w)
                    )
                    results.append((n, workers, batch_size, seconds))
    finally:
        torch.set_num_threads(before)
    rows = []
    for n, workers in plans:
        for batch_size in (4, 8, 16, 32):
            secs = statistics.median(
                s for t, w, b, s in results if (t, w, b) == (n, workers, batch_size)
            )
            rows.append(
                {
                    "threads": n,
                    "workers": workers,
                    "batch_size": batch_size,
                    "tokens_per_s": tokens / secs,
                }
            )
    return {"tokens": tokens, "default_threads": before, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    lm = load_model()
    full = load_corpus()
    step = max(1, len(full.stories) // args.stories)
    corpus = Corpus(full.stories[::step][: args.stories], full.neutral[:16], "bench")

    cache = cache_study(lm, corpus, args.rounds)
    print(f"re-extraction, {cache['texts']} texts, {cache['tokens']} tokens, all layers:")
    for name, row in cache["rows"].items():
        print(f"  {name:6s} {row['tokens_per_s']:10.1f} tok/s   {row['x_floor']:8.2f}x floor")

    threads = thread_study(lm, corpus, args.rounds)
    print(f"floor pass by threads and batch size (torch default: {threads['default_threads']}):")
    for row in threads["rows"]:
        rate = row["tokens_per_s"]
        print(
            f"  threads {row['threads']}  workers {row['workers']}  batch {row['batch_size']:3d}"
            f"  {rate:8.1f} tok/s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cache": cache, "threads": threads}, f, indent=2)


if __name__ == "__main__":
    main()
