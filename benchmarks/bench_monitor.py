"""What live monitoring adds to generation time, measured in the same run as plain generation.

Plain greedy generation of N tokens and the same generation under :class:`LiveMonitor`
(z-scores, alert rules, a JSONL trace, and the extra partial forward pass that scores the
last token of a reply cut by the token limit) alternate, every monitored run between two
plain runs (plain, A, plain, B, plain, A, ...), so slow drifts of a shared machine hit both
alike. The end-to-end overhead is reported as the ratio of medians, the median of paired
ratios (each monitored run against the mean of the plain runs either side of it, which
cancels a linear drift) with a bootstrap interval of their mean, and the ratio of minima.
Runs here vary by 5-10%, so end to end cannot resolve 1-2%.

Three more views, each free of the machine's slow drifts because it compares within one run:

- **self-timed share**: every monitored reply times its own monitoring work in place
  (``MonitoredReply.monitor_seconds``: scoring hooks, per-token work, the last token's pass,
  set-up and trace) against the whole call (``seconds``);
- **alternating steps**: in one generation the scoring runs on every other decode step only,
  and scored steps are compared with their unscored neighbours 70 ms apart, which also
  catches indirect costs (caches, threads) that timing the monitor's own code cannot see;
- **components**: each piece timed alone.

    python benchmarks/bench_monitor.py [--reps 16] [--tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emovec.catalog import emotions
from emovec.generation import generate
from emovec.hooks import without_offset
from emovec.models import load_model
from emovec.monitor import (
    DEFAULT_WATCH,
    AlertRule,
    LiveMonitor,
    RowState,
    TraceWriter,
    Watcher,
    calibrate,
)
from emovec.vectors import EmotionVectors

PROMPT = "Tell me about your day."


def random_vectors(lm, layer: int = 20) -> EmotionVectors:
    """171 random unit directions at one layer: the cost does not depend on what they are."""
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(1, 171, lm.d_model), dim=-1)
    return EmotionVectors(
        vectors=directions,
        emotions=emotions(),
        layers=[layer],
        default_layer=layer,
        model=lm.identity(),
        residual_norm=torch.tensor([10.0]),
        mean_activation=torch.zeros(1, lm.d_model),
    )


def median_s(fn, calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def component_costs(lm, live: LiveMonitor, tmp: str) -> dict[str, float]:
    """Each piece the monitor adds, timed alone: hook, per-token work, last-token pass."""
    from emovec.hooks import run_to_layer

    hidden = torch.randn(1, 1, lm.d_model)
    scoring = Watcher(live, [RowState(0, "p")], 0)
    scoring.decoding = True  # past the prefill: every call scores

    def hook() -> None:
        scoring.score(live.layer, hidden, 40)

    writer = TraceWriter(Path(tmp) / "components.jsonl", live.meta())
    ids = lm.encode(" The rain had stopped by the time we reached the station, and the")
    raw = np.random.default_rng(0).normal(0, 0.05, len(live.emotions)).astype(np.float32)

    def per_token() -> None:
        state = live.new_row(0, "p")  # with a tracker per rule
        watch = Watcher(live, [state], 0, on_token=writer.token)
        for token in ids:
            watch.accept(state, token, raw)
        writer.flush()  # token lines are serialised at flush time: count that too

    one = torch.tensor([[ids[0]]])
    with torch.no_grad():
        full = median_s(lambda: lm.model(input_ids=one), 30)
        partial = median_s(lambda: run_to_layer(lm.model, live.layer, input_ids=one), 30)
    costs = {
        "hook_us": median_s(hook, 2000) * 1e6,
        "per_token_work_us": median_s(per_token, 50) / len(ids) * 1e6,
        "last_token_pass_share_of_forward": partial / full,
    }
    writer.close()
    return costs


def bootstrap_ci(ratios: np.ndarray, draws: int = 10_000) -> tuple[float, float]:
    """95% interval of the mean of per-repetition ratios (resampling repetitions)."""
    rng = np.random.default_rng(0)
    means = rng.choice(ratios, size=(draws, len(ratios))).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def alternating_steps(live: LiveMonitor, n: int, runs: int, tmp: str) -> dict[str, float]:
    """Cost of scoring one decode step, from scored and unscored steps of the same generations.

    The scoring hook (and so the per-token work that follows it) runs on every other decode
    step; a pre-forward hook stamps each step. Which parity is scored alternates per run.
    """
    original = Watcher.score
    calls = {"n": 0, "phase": 0}

    @without_offset  # as the real hook: the KV cache is not asked for its length
    def every_other(self, layer, hidden, offset):
        calls["n"] += 1
        if hidden.shape[1] > 1 or calls["n"] % 2 == calls["phase"]:
            return original(self, layer, hidden, offset)
        return None

    stamps: list[float] = []
    handle = live.lm.model.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    scored, unscored = [], []
    Watcher.score = every_other
    try:
        for run in range(runs):
            calls.update(n=0, phase=run % 2)
            stamps.clear()
            live.generate(PROMPT, max_new_tokens=n, min_new_tokens=n, trace=Path(tmp) / "a.jsonl")
            steps = np.diff(stamps)  # steps[i]: forward pass i, sampling, stopping criteria
            for i in range(1, len(steps)):  # 0 is the prefill; pass i is hook call i + 1
                (scored if (i + 1) % 2 == calls["phase"] else unscored).append(steps[i])
    finally:
        Watcher.score = original
        handle.remove()
    on, off = np.array(scored), np.array(unscored)
    return {
        "scored_step_ms_median": float(np.median(on) * 1e3),
        "unscored_step_ms_median": float(np.median(off) * 1e3),
        "per_step_overhead_medians": float(np.median(on) / np.median(off) - 1),
        "per_step_overhead_means": float(on.mean() / off.mean() - 1),
        "steps_each": len(on),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--vectors", default=None, help="a vector file (default: random, layer 20)")
    parser.add_argument("--alt-runs", type=int, default=8, help="runs for alternating steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    lm = load_model()
    vectors = EmotionVectors.load(args.vectors) if args.vectors else random_vectors(lm)
    baseline = calibrate(lm, vectors, limit=4, max_tokens=128, cache=False)
    watched = list(DEFAULT_WATCH)
    rules = [AlertRule("desperate", "level", 3.0), AlertRule("afraid", "rise", 2.0)]
    monitors = {
        "6 emotions, 2 rules, trace": LiveMonitor(lm, vectors, watched, None, baseline, rules),
        "171 emotions, trace": LiveMonitor(lm, vectors, None, None, baseline),
    }
    n = args.tokens
    kwargs = {"max_new_tokens": n, "min_new_tokens": n}
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in monitors}}
    shares: dict[str, list[float]] = {k: [] for k in monitors}
    generate(lm, PROMPT, max_new_tokens=4)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        for live in monitors.values():  # warm-up
            live.generate(PROMPT, max_new_tokens=4, trace=Path(tmp) / "warm.jsonl")
        # Every monitored run sits between two plain runs: plain, A, plain, B, ..., plain.
        schedule = [x for _ in range(args.reps) for name in monitors for x in ("plain", name)]
        seconds = []
        for i, name in enumerate([*schedule, "plain"]):
            start = time.perf_counter()
            if name == "plain":
                generate(lm, PROMPT, **kwargs)
            else:
                reply = monitors[name].generate(PROMPT, trace=Path(tmp) / f"{i}.jsonl", **kwargs)
                assert len(reply.pieces) == n, "every generated token is scored"
                shares[name].append(reply.monitor_seconds / reply.seconds)
            seconds.append(time.perf_counter() - start)
            times[name].append(seconds[-1])
        paired_ratios: dict[str, list[float]] = {k: [] for k in monitors}
        for i, name in enumerate(schedule):
            if name != "plain":
                paired_ratios[name].append(seconds[i] / (0.5 * (seconds[i - 1] + seconds[i + 1])))

        components = component_costs(lm, monitors["6 emotions, 2 rules, trace"], tmp)
        steps = alternating_steps(monitors["6 emotions, 2 rules, trace"], n, args.alt_runs, tmp)

    plain = np.array(times["plain"])
    result = {
        "model": lm.name,
        "torch_threads": torch.get_num_threads(),
        "tokens": n,
        "reps": args.reps,
        "plain_s_median": round(float(np.median(plain)), 4),
        "monitored": {},
    }
    print(f"model {lm.name}, {n} tokens, {args.reps} repetitions, each run between plain runs")
    print(f"plain generation: median {np.median(plain):.3f} s (min {plain.min():.3f})")
    for name in monitors:
        runs = np.array(times[name])
        ratio_of_medians = float(np.median(runs) / np.median(plain))
        ratios = np.array(paired_ratios[name])
        paired = float(np.median(ratios))
        ratio_of_mins = float(runs.min() / plain.min())
        low, high = bootstrap_ci(ratios)
        share = float(np.median(shares[name]))
        result["monitored"][name] = {
            "s_median": round(float(np.median(runs)), 4),
            "overhead_ratio_of_medians": round(ratio_of_medians - 1, 4),
            "overhead_median_paired": round(paired - 1, 4),
            "overhead_mean_paired_ci95": [round(low - 1, 4), round(high - 1, 4)],
            "overhead_ratio_of_minima": round(ratio_of_mins - 1, 4),
            "self_timed_share_median": round(share, 4),
        }
        print(
            f"monitored ({name}): median {np.median(runs):.3f} s; overhead "
            f"{ratio_of_medians - 1:+.1%} (medians), {paired - 1:+.1%} (paired; mean's 95% CI "
            f"{low - 1:+.1%} to {high - 1:+.1%}), {ratio_of_mins - 1:+.1%} (minima); "
            f"self-timed monitoring share {share:.2%}"
        )
    step = float(np.median(plain)) / n
    per_token = (components["hook_us"] + components["per_token_work_us"]) * 1e-6
    predicted = (per_token * n + components["last_token_pass_share_of_forward"] * step) / (step * n)
    result["components"] = {k: round(v, 4) for k, v in components.items()}
    result["predicted_overhead_from_components"] = round(predicted, 4)
    print(
        f"components: hook {components['hook_us']:.1f} us/token, per-token work "
        f"{components['per_token_work_us']:.1f} us/token, last-token pass "
        f"{components['last_token_pass_share_of_forward']:.2f} of a forward; "
        f"predicted overhead for {n} tokens: {predicted:+.2%}"
    )
    result["alternating_steps"] = {k: round(v, 4) for k, v in steps.items()}
    print(
        f"alternating steps ({steps['steps_each']} each): scored "
        f"{steps['scored_step_ms_median']:.2f} ms vs unscored "
        f"{steps['unscored_step_ms_median']:.2f} ms per step: "
        f"{steps['per_step_overhead_medians']:+.2%} (medians), "
        f"{steps['per_step_overhead_means']:+.2%} (means)"
    )
    spread = statistics.pstdev(times["plain"]) / statistics.mean(times["plain"])
    result["plain_relative_spread"] = round(spread, 4)
    print(f"run-to-run spread of plain generation: {spread:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
