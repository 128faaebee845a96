"""Peak memory of extraction at 1x and 4x corpus size, each in a fresh process.

Extraction keeps per-emotion sums and a scatter matrix per layer, never per-story
activations, so its peak should not grow with the number of stories. The 4x corpus is the 1x
corpus repeated four times, so both see the same lengths (activation buffers grow with the
longest batch, which a larger sample of stories would otherwise change). Each size runs in
its own subprocess and reports its peak resident set (ru_maxrss).

    python benchmarks/bench_memory.py [--stories 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def child(n_stories: int, repeat: int) -> None:
    from emovec.corpus import Corpus, load_corpus
    from emovec.extraction import extract
    from emovec.models import load_model

    lm = load_model()
    corpus = load_corpus()
    step = max(1, len(corpus.stories) // n_stories)
    stories = corpus.stories[::step][:n_stories] * repeat
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extract(lm, Corpus(stories, corpus.neutral[:16], "bench"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"stories": len(stories), "after_load_kb": base, "peak_kb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=64)
    parser.add_argument("--child", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child is not None:
        child(*args.child)
        return
    rows = []
    for repeat in (1, 4):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(args.stories), str(repeat)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        print(
            f"{row['stories']:5d} stories: peak RSS {row['peak_kb'] / 1024:.0f} MiB "
            f"(after model load {row['after_load_kb'] / 1024:.0f} MiB)"
        )
    ratio = rows[1]["peak_kb"] / rows[0]["peak_kb"]
    print(f"peak at 4x corpus / peak at 1x: {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio_4x_over_1x": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
