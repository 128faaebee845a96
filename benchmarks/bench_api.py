"""Throughput of the steering API: N concurrent requests with different steering, batched vs
one at a time.

The same server code runs twice per repetition: with batching (``--max-batch``, default 8,
requests arriving within 15 ms share one left-padded ``generate`` call, each row with its
own steering vector) and with batching off (``max_batch=1``: one request at a time, as a
plain endpoint answers). Each run sends N requests at once over HTTP, each with its own
emotion steered, greedy, and times from the first send to the last reply. Reported: reply
tokens per second of each mode (median over repetitions, modes alternating so a shared
machine's drifts hit both), their ratio, and whether both modes gave every request the same
text (greedy batching must not change replies).

    python benchmarks/bench_api.py [--requests 8] [--tokens 24] [--reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import torch

from emovec.apps.api_server import ApiLimits, create_api_app
from emovec.models import load_model
from emovec.vectors import EmotionVectors

EMOTIONS = ["happy", "sad", "angry", "afraid", "calm", "excited", "proud", "lonely"]
PROMPTS = [
    "Tell me about your day.",
    "Write a short story about a lighthouse keeper.",
    "What do you think of rainy weekends?",
    "Describe the town you grew up in.",
]


def bundled_vectors(lm) -> EmotionVectors:
    from importlib import resources

    entry = resources.files("emovec.data").joinpath("prebuilt").joinpath(f"{lm.name}.safetensors")
    return EmotionVectors.load(str(entry))


class Running:
    """The API in a background thread on a free loopback port."""

    def __init__(self, lm, vectors: EmotionVectors, max_batch: int) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        limits = ApiLimits(max_batch=max_batch, queue=64)
        self.app = create_api_app(lm, vectors, port=self.port, limits=limits)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.app.app.state.backend.batcher.close()


async def burst(url: str, n: int, tokens: int, strength: float) -> tuple[float, int, list[str]]:
    """Send n differently steered requests at once: (seconds, reply tokens, texts)."""
    import httpx

    def body(i: int) -> dict:
        return {
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": tokens,
            "emovec": {"steer": {EMOTIONS[i % len(EMOTIONS)]: strength}},
        }

    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        started = time.perf_counter()
        replies = await asyncio.gather(
            *[client.post("/chat/completions", json=body(i)) for i in range(n)]
        )
        seconds = time.perf_counter() - started
    for reply in replies:
        reply.raise_for_status()
    data = [r.json() for r in replies]
    produced = sum(d["usage"]["completion_tokens"] for d in data)
    return seconds, produced, [d["choices"][0]["message"]["content"] for d in data]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M")
    parser.add_argument("--vectors", type=Path, default=None, help="default: the bundled ones")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    lm = load_model(args.model) if args.model else load_model()
    vectors = EmotionVectors.load(args.vectors) if args.vectors else bundled_vectors(lm)
    vectors.check_model(lm)
    modes = {"batched": args.max_batch, "one at a time": 1}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    texts: dict[str, list[str]] = {}
    produced: dict[str, int] = {}
    for rep in range(args.reps):
        order = list(modes) if rep % 2 == 0 else list(modes)[::-1]
        for mode in order:
            with Running(lm, vectors, modes[mode]) as url:
                asyncio.run(burst(url, 1, 2, args.strength))  # warm-up
                seconds, n, replies = asyncio.run(
                    burst(url, args.requests, args.tokens, args.strength)
                )
            rates[mode].append(n / seconds)
            texts[mode], produced[mode] = replies, n
            print(f"rep {rep + 1} {mode:>13}: {n} tokens in {seconds:6.1f} s = {n / seconds:.1f}/s")
    median = {m: statistics.median(r) for m, r in rates.items()}
    same = sum(a == b for a, b in zip(texts["batched"], texts["one at a time"], strict=True))
    result = {
        "model": lm.name,
        "requests": args.requests,
        "max_tokens": args.tokens,
        "strength": args.strength,
        "max_batch": args.max_batch,
        "reply_tokens": produced,
        "tokens_per_s": {m: round(v, 2) for m, v in median.items()},
        "runs_tokens_per_s": {m: [round(v, 2) for v in r] for m, r in rates.items()},
        "ratio": round(median["batched"] / median["one at a time"], 2),
        "same_replies": f"{same}/{args.requests}",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    print(
        f"\n| mode | reply tokens/s |\n|---|---|\n"
        f"| batched (max {args.max_batch}) | {median['batched']:.1f} |\n"
        f"| one at a time | {median['one at a time']:.1f} |\n\n"
        f"ratio {result['ratio']}x; same replies in both modes: {result['same_replies']}; "
        f"{result['torch_threads']} torch threads, {result['cpus']} CPUs, "
        f"load average {result['load_average_1min']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
