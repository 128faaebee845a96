"""Cost of emovec's hooks during generation, timed in isolation and end to end.

End-to-end generation timing on a shared 2-core machine is noisy (+-10%), far more than a
hook costs, so the hooks are first timed alone: each of the hooks that ``steer`` and
``Monitor`` register is called on a decode-shaped residual [1, 1, d_model] many times, and
its cost per call is set against one measured decode step. Then plain, steered and monitored
generation are timed with many interleaved repetitions, for what that is worth.

    python benchmarks/bench_hooks.py [--reps 8] [--tokens 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from emovec.catalog import emotions
from emovec.hooks import _make_hook, residual_hooks
from emovec.models import load_model
from emovec.monitor import Monitor
from emovec.steering import generate, steer
from emovec.vectors import EmotionVectors


def per_call_us(hook, hidden: torch.Tensor, calls: int = 20000) -> float:
    """Median microseconds per call of a registered-style forward hook."""
    kwargs: dict = {}
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            hook(None, (), kwargs, hidden)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    lm = load_model()
    # Hook cost does not depend on what the directions are: 171 random unit vectors at layer 12
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(1, 171, lm.d_model), dim=-1)
    vectors = EmotionVectors(
        vectors=directions,
        emotions=emotions(),
        layers=[12],
        default_layer=12,
        model=lm.identity(),
        residual_norm=torch.tensor([10.0]),
        mean_activation=torch.zeros(1, lm.d_model),
    )
    delta = 0.5 * vectors.norm_at(12) * vectors.vector("happy", 12)
    hidden = torch.randn(1, 1, lm.d_model)

    def steer_fn(_layer, h, _offset):
        return h + delta

    monitor = Monitor(lm, vectors, layer=12)  # scores all emotions in the file

    def monitor_fn(layer, h, offset):
        monitor._hook(layer, h, offset)
        monitor.chunks.clear()

    costs = {
        "empty hook": per_call_us(_make_hook(12, lambda *_: None), hidden),
        "steering hook": per_call_us(_make_hook(12, steer_fn), hidden),
        "monitor hook": per_call_us(_make_hook(12, monitor_fn), hidden),
    }

    prompt = "Tell me about your day."
    plain_times, steered_times, read_times = [], [], []
    generate(lm, prompt, max_new_tokens=4)  # warm-up
    for _ in range(args.reps):
        start = time.perf_counter()
        generate(lm, prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        plain_times.append(time.perf_counter() - start)
        with steer(lm, vectors, {"happy": 0.5}):
            start = time.perf_counter()
            generate(lm, prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            steered_times.append(time.perf_counter() - start)
        with residual_hooks(lm.layers, {12: monitor_fn}):
            start = time.perf_counter()
            generate(lm, prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            read_times.append(time.perf_counter() - start)
    step_ms = statistics.median(plain_times) / args.tokens * 1e3
    result = {
        "hook_us_per_call": {k: round(v, 2) for k, v in costs.items()},
        "decode_step_ms": round(step_ms, 2),
        "hook_share_of_step": {k: v / (step_ms * 1e3) for k, v in costs.items()},
        "generation_s_median": {
            "plain": round(statistics.median(plain_times), 3),
            "steered": round(statistics.median(steered_times), 3),
            "monitored": round(statistics.median(read_times), 3),
        },
        "generation_spread": {
            "plain": [round(min(plain_times), 3), round(max(plain_times), 3)],
            "steered": [round(min(steered_times), 3), round(max(steered_times), 3)],
        },
    }
    print(f"model {lm.name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"decode step (batch 1): {step_ms:.2f} ms")
    for name, us in costs.items():
        share = us / (step_ms * 1e3)
        print(f"  {name:14s} {us:7.2f} us per call  = {share:.5%} of a decode step")
    gen = result["generation_s_median"]
    print(
        f"generation of {args.tokens} tokens, median of {args.reps} interleaved: "
        f"plain {gen['plain']} s, steered {gen['steered']} s "
        f"({gen['steered'] / gen['plain']:.3f}x), monitored {gen['monitored']} s "
        f"({gen['monitored'] / gen['plain']:.3f}x)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
