"""Fidelity study: which method settings to default to, chosen without labels, then the rest.

    python scripts/fidelity.py [--model NAME] [--corpus curated-v2] [--layers 10-24]
                               [--json benchmarks/results/fidelity-MODEL.json]

1. Every method variant (denoising source x reading directions) is built from the same
   pooled activations (the activation cache: the model runs once per text).
2. Label-free criteria per variant and layer: split-half reliability (Spearman-Brown),
   held-out top-1/top-5 on same-style stories (every 4th story of each emotion held out), and
   top-1/top-5 on the other-style messages for every pooling choice.
3. The default is the variant, layer and pooling with the best mean of reliability, held-out
   top-5 and other-style top-5, at the layer each variant's own held-out top-1 picks. The
   geometry (plain PCA or split-half cross-covariance PCA) is the one whose first two axes
   replicate better between two halves of the stories at that layer. Human valence/arousal
   ratings play no part in either choice.
4. Only then: the scorecard (PCs against valence/arousal, supervised valence, families,
   sweeps, implicit scenarios) for every variant at its layer, for the record, with the
   geometry checks under both geometries.

Writes one JSON with everything and prints markdown tables (docs/fidelity.md quotes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from emovec.corpus import load_corpus
from emovec.experiments.common import chat_residuals
from emovec.experiments.geometry import geometry_metrics
from emovec.experiments.scorecard import (
    CHECKS,
    EXTRA_KEYS,
    chat_message_accuracy,
    classify_messages,
    heldout_messages,
    layer_checks,
    message_residuals,
    reading_position,
)
from emovec.extraction import DENOISE, READERS, extract
from emovec.models import load_model
from emovec.reading import POOLS


def parse_layers(text: str | None, n: int) -> list[int] | None:
    if not text:
        return None
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, min(hi, n - 1) + 1))
    return [int(x) for x in text.split(",")]


def method(name: str) -> dict[str, object]:
    """Extraction settings of a variant name: ``denoise/reader``, with ``@shrinkage`` after a
    whitened reader (e.g. ``none/whitened@0.6``; without it, the default shrinkage)."""
    denoise, reader = name.split("/")
    reader, _, shrinkage = reader.partition("@")
    settings: dict[str, object] = {"denoise": denoise, "reader": reader}
    if shrinkage:
        settings["shrinkage"] = float(shrinkage)
    return settings


def geometry_checks(vec, layer: int) -> dict[str, float | None]:
    """The geometry lines of the scorecard for vectors that carry split-half axes."""
    lex = geometry_metrics(vec, layer, n_init=3)["lexicon"] or {}
    values = {
        "pc1_valence": lex.get("pc1_valence"),
        "valence_top2": max(abs(lex.get("pc1_valence", 0)), abs(lex.get("pc2_valence", 0))),
        "valence_top3": (lex.get("best_valence_top3") or {}).get("abs_r"),
        "pc2_arousal": lex.get("pc2_arousal"),
    }
    return {k: None if v is None else round(float(v), 4) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--corpus", default="curated-v2")
    parser.add_argument("--layers", default=None, help="e.g. 10-24 (default: all)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-scorecard", action="store_true")
    parser.add_argument(
        "--topics",
        type=int,
        default=None,
        help="keep only the stories (and neutral stories) on the corpus's first N topics, "
        "e.g. 16 for corpus v2 as first designed (default: all)",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated denoise/reader pairs, e.g. none/whitened,dialogues/mean, a "
        "whitened reader optionally with @shrinkage, e.g. none/whitened@0.6 (default: all)",
    )
    args = parser.parse_args()

    started = time.time()
    lm = load_model(args.model)
    corpus = load_corpus(args.corpus)
    if args.topics is not None:  # 0 or too many is refused by first_topics, not ignored
        corpus = corpus.first_topics(args.topics)
    layers = parse_layers(args.layers, lm.n_layers)
    variants = [f"{d}/{r}" for d in DENOISE for r in READERS]
    if args.variants:
        variants = args.variants.split(",")
    built = {}
    for name in variants:
        t = time.time()
        built[name] = extract(
            lm,
            corpus,
            layers=layers,
            holdout_every=4,
            geometry="split-half",
            cache=True,
            progress=True,
            **method(name),
        )
        print(f"{name}: built in {time.time() - t:.0f} s", flush=True)
    extract_seconds = time.time() - started
    layers = built[variants[0]].layers
    messages = heldout_messages()
    cached = message_residuals(lm, layers, messages)
    chat_cached = chat_residuals(lm, [m["text"] for m in messages], layers)

    report: dict = {
        "model": args.model,
        "corpus": {"source": corpus.source, "hash": corpus.hash, "n_stories": len(corpus.stories)},
        "layers": layers,
        "extract_seconds": round(extract_seconds, 1),
        "variants": {},
    }
    best = None
    for name, vec in built.items():
        other = classify_messages(vec, layers, cached, messages)
        chat = chat_message_accuracy(vec, layers, chat_cached, messages)
        rel = vec.metrics["reliability"]
        held = vec.metrics["heldout"]
        i = layers.index(vec.default_layer)
        pool = max(POOLS, key=lambda p: other[p]["top5"][i])
        criterion = float(np.mean([rel["vector"][i], held["top5"][i], other[pool]["top5"][i]]))
        replication = {
            g: round(float(np.mean(reps[i])), 4)
            for g, reps in vec.metrics["geometry"]["replication"].items()
        }
        report["variants"][name] = {
            "layer": vec.default_layer,
            "criterion": round(criterion, 4),
            "geometry_replication": replication,
            "geometry": max(replication, key=replication.__getitem__),
            "pool": pool,
            "reliability": rel,
            "heldout": {k: held[k] for k in ("top1", "top5")},
            "other_style": other,
            "chat_messages": chat,
            "message_position": reading_position(chat, i),
        }
        print(
            f"{name:28s} layer {vec.default_layer:2d}  reliability {rel['vector'][i]:.3f}  "
            f"held-out top-1 {held['top1'][i]:.3f} top-5 {held['top5'][i]:.3f}  other-style "
            f"top-5 {other[pool]['top5'][i]:.3f} ({pool})  criterion {criterion:.3f}  "
            f"axes 1-2 replicate: pca {replication['pca']:.3f}, split-half "
            f"{replication['split-half']:.3f}",
            flush=True,
        )
        if best is None or criterion > best[0]:
            best = (criterion, name)
    assert best is not None
    report["chosen"] = best[1]
    report["chosen_geometry"] = report["variants"][best[1]]["geometry"]
    print(
        f"chosen by label-free criteria: {best[1]}, geometry {report['chosen_geometry']}",
        flush=True,
    )

    if not args.no_scorecard:
        for name, vec in built.items():
            v = report["variants"][name]
            i = layers.index(vec.default_layer)
            mine = {k: [v["other_style"][v["pool"]][k][i]] for k in ("top1", "top5")}
            chat = {
                p: {k: [acc[k][i]] for k in ("top1", "top5")}
                for p, acc in v["chat_messages"].items()
            }
            plain = dataclasses.replace(vec, geometry_scores=None)
            checks = layer_checks(lm, plain, [vec.default_layer], v["pool"], other=mine, chat=chat)
            report["variants"][name]["scorecard"] = {
                k: None if not np.isfinite(checks[k][0]) else round(checks[k][0], 4)
                for k in [*(c.key for c in CHECKS), *EXTRA_KEYS]
            }
            report["variants"][name]["split_half_geometry"] = geometry_checks(
                vec, vec.default_layer
            )
            card = report["variants"][name]["scorecard"]
            print(
                f"{name:28s} PC1-valence {card['pc1_valence']}  top-2 {card['valence_top2']}  "
                f"top-3 {card['valence_top3']}  supervised {card['supervised_valence']}  "
                f"PC2-arousal {card['pc2_arousal']}  ARI {card['family_ari']}  sweeps "
                f"{card['sweeps']} (message {card['sweeps_message']})  implicit "
                f"{card['implicit']} (message {card['implicit_message']}, reply start "
                f"{card['implicit_reply_start']})  | split-half geometry: "
                f"{report['variants'][name]['split_half_geometry']}",
                flush=True,
            )
        # every layer of the chosen variant
        chosen = built[best[1]]
        if report["chosen_geometry"] == "pca":
            chosen = dataclasses.replace(chosen, geometry_scores=None)
        pool = report["variants"][best[1]]["pool"]
        per_layer = layer_checks(
            lm,
            chosen,
            layers,
            pool,
            other=report["variants"][best[1]]["other_style"][pool],
            chat=report["variants"][best[1]]["chat_messages"],
        )
        report["chosen_per_layer"] = {
            k: [None if not np.isfinite(v) else round(float(v), 4) for v in vals]
            for k, vals in per_layer.items()
        }
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
