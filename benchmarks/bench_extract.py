"""Extraction throughput and correctness against the floor and peers, side by side in one run.

Every contender computes the same thing: for each text, the mean residual stream over tokens
from the 50th on, at the chosen layers. Contenders:

- ``floor``: a bare forward pass of the backbone (no LM head, no hooks) stopping after the
  deepest requested layer, over exactly the batches emovec uses, one batch at a time with
  all of torch's threads (how every peer runs);
- ``floor, N workers``: the same bare passes, N batches side by side with the threads split
  between them (what emovec's scheduling does, without any of its pooling work);
- ``emovec``: :class:`emovec.extraction.PooledPass` with its default workers;
- ``output_hidden_states``: transformers' full forward with all hidden states, the usual way;
- ``steering-vectors`` and ``emotion-probes`` (PyPI peers, when installed with ``--no-deps``):
  their activation recording hooks around a full forward, then the same pooling.

Rounds are interleaved and the median is reported, so drift in machine load hits every
contender alike. Correctness is the relative error of each contender's means against an
unbatched (batch size 1) reference.

    python benchmarks/bench_extract.py [--stories 48] [--rounds 3] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable

import torch
from floor import floor_pass

from emovec.corpus import load_corpus
from emovec.extraction import (
    ExtractionSettings,
    PooledPass,
    _batches,
    default_batch_size,
    default_workers,
    pooling_weights,
    right_padded,
)
from emovec.models import load_model

START = 50


def padded_batches(lm, ids, batch_size):
    """The same length-bucketed, right-padded batches emovec builds."""
    pad = lm.tokenizer.pad_token_id
    for batch in _batches([len(x) for x in ids], batch_size):
        input_ids, mask = right_padded([ids[i] for i in batch], pad)
        yield batch, input_ids, mask


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Correct pooling of [B, T, d] with padding excluded (what a careful peer user writes)."""
    weights = pooling_weights(mask.sum(1), mask.shape[1], START)
    return torch.bmm(weights.unsqueeze(1), hidden.float()).squeeze(1)


def make_contenders(lm, ids, layers, batch_size) -> dict[str, Callable[[], torch.Tensor | None]]:
    n, d = len(ids), lm.d_model

    workers = default_workers(lm)
    deepest = max(layers)

    def floor():
        floor_pass(lm, ids, batch_size, deepest)

    def floor_workers():
        floor_pass(lm, ids, batch_size, deepest, workers)

    def emovec_pass():
        out = torch.empty(n, len(layers), d)
        passer = PooledPass(lm, layers, ExtractionSettings(batch_size=batch_size))
        for batch, pooled in passer.run(ids):
            out[batch] = pooled.transpose(0, 1)
        return out

    def hidden_states():
        out = torch.empty(n, len(layers), d)
        with torch.no_grad():
            for batch, input_ids, mask in padded_batches(lm, ids, batch_size):
                hs = lm.model(
                    input_ids=input_ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states
                for j, layer in enumerate(layers):
                    out[batch, j] = pool(hs[layer + 1], mask)
        return out

    contenders = {"floor": floor}
    if workers > 1:
        contenders[f"floor, {workers} workers"] = floor_workers
    contenders |= {"emovec": emovec_pass, "output_hidden_states": hidden_states}

    if importlib.util.find_spec("steering_vectors"):
        from steering_vectors import record_activations

        def steering_vectors():
            out = torch.empty(n, len(layers), d)
            with torch.no_grad():
                for batch, input_ids, mask in padded_batches(lm, ids, batch_size):
                    with record_activations(lm.model, layer_nums=layers) as rec:
                        lm.model(input_ids=input_ids, attention_mask=mask)
                    for j, layer in enumerate(layers):
                        out[batch, j] = pool(rec[layer][0], mask)
            return out

        contenders["steering-vectors"] = steering_vectors

    if importlib.util.find_spec("emotion_probes"):
        from emotion_probes.extract import hook_layers

        def emotion_probes():
            # As its extract_activations does: full forward, per-row arrays incl. padding.
            out = torch.empty(n, len(layers), d)
            with torch.no_grad(), hook_layers(lm.model, layers) as hooks:
                for batch, input_ids, mask in padded_batches(lm, ids, batch_size):
                    lm.model(input_ids=input_ids, attention_mask=mask)
                    for j, hook in enumerate(hooks):
                        acts = hook.activations[0].float()
                        out[batch, j] = acts[:, START - 1 :].mean(1)
                        hook.activations.clear()
            return out

        contenders["emotion-probes"] = emotion_probes
    return contenders


def reference(lm, ids, layers) -> torch.Tensor:
    """Unbatched means from transformers' hidden states (no padding, no emovec code)."""
    out = torch.empty(len(ids), len(layers), lm.d_model)
    with torch.no_grad():
        for i, row in enumerate(ids):
            hs = lm.model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
            first = START - 1 if len(row) >= START else len(row) // 2
            for j, layer in enumerate(layers):
                out[i, j] = hs[layer + 1][0, first:].mean(0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="every contender's (default: emovec's)"
    )
    parser.add_argument("--json", default=None, help="Also write results to this file.")
    args = parser.parse_args()

    lm = load_model()
    args.batch_size = args.batch_size or default_batch_size(lm)
    stories = load_corpus("curated").stories
    step = max(1, len(stories) // args.stories)
    texts = [s["text"] for s in stories[::step][: args.stories]]
    ids = [lm.encode(t) for t in texts]
    tokens = sum(map(len, ids))
    n_layers = lm.n_layers
    study_layer = round((n_layers - 1) * 2 / 3)
    settings = {
        f"study setting (layer {study_layer}, 2/3 depth)": [study_layer],
        f"all {n_layers} layers": list(range(n_layers)),
    }
    results: dict[str, dict] = {}
    for setting, layers in settings.items():
        # The last layer's hidden_states entry is after the final norm; compare below it.
        ref_layers = [layer for layer in layers if layer < n_layers - 1]
        ref = reference(lm, ids, ref_layers)
        contenders = make_contenders(lm, ids, layers, args.batch_size)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        errors: dict[str, float | None] = {}
        for name, fn in contenders.items():  # warm-up and correctness
            means = fn()
            if means is None:
                errors[name] = None
                continue
            got = means[:, [layers.index(layer) for layer in ref_layers]]
            errors[name] = float((got - ref).norm(dim=-1).div(ref.norm(dim=-1)).max())
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        results[setting] = {
            name: {
                "seconds": round(m, 3),
                "tokens_per_s": round(tokens / m, 1),
                "vs_floor": round(med["floor"] / m, 3),
                "vs_emovec": round(med["emovec"] / m, 3),
                "max_rel_error": errors[name],
            }
            for name, m in med.items()
        }
    header = (
        f"model {lm.name}, {len(texts)} stories, {tokens} tokens, batch {args.batch_size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, emovec workers "
        f"{default_workers(lm)}, "
        f"{args.rounds} interleaved rounds (median)"
    )
    print(header)
    for setting, rows in results.items():
        print(f"\n{setting}")
        print("  contender                 tok/s  x floor  emovec x  max rel err")
        for name, row in rows.items():
            err = "-" if row["max_rel_error"] is None else f"{row['max_rel_error']:.2e}"
            print(
                f"  {name:22s} {row['tokens_per_s']:8.1f} {row['vs_floor']:8.3f} "
                f"{1 / row['vs_emovec']:9.2f} {err:>12s}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
