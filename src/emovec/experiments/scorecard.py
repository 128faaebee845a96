"""The scorecard: every check of the study, our figure beside the study's, pass or fail.

Each check has a stated threshold (the fidelity targets of docs/fidelity.md) and is computed
per layer where it is cheap (geometry, reliability, sweeps, implicit scenarios, held-out
stories and other-style messages), so a reader sees where in the model the study's picture
appears. Checks that need long runs (steering sentiment, preferences, case studies) are read
from the main job's result folders when given, and marked "not run" otherwise.

Thresholds are fixed here, before any run, and the method's defaults are never chosen by
them (see :mod:`emovec.extraction`: defaults follow label-free criteria).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec.experiments import geometry, implicit, sweeps
from emovec.experiments.common import (
    POSITIONS,
    ExperimentError,
    chat_residuals,
    check_compatible,
    pick_emotions,
    scores_at_positions,
    sequence_residuals,
)
from emovec.experiments.result import Result, pyplot
from emovec.models import LanguageModel
from emovec.progress import count_progress
from emovec.reading import POOLS, pooled_positions
from emovec.scoring import CosineScorer
from emovec.vectors import EmotionVectors


@dataclass(frozen=True)
class Check:
    """One line of the scorecard: what is measured, the study's figure, the bar to pass."""

    key: str
    label: str
    study: str
    threshold: float
    absolute: bool = False  # compare |value| (a correlation whose sign is arbitrary)


CHECKS = [
    Check("reliability", "split-half reliability of the vectors (Spearman-Brown)", "-", 0.9),
    Check("pc1_valence", "PC1 vs human valence, |r|", "0.81", 0.6, absolute=True),
    Check("valence_top2", "valence on PC1 or PC2, best |r|", "0.81 (PC1)", 0.6),
    Check("valence_top3", "valence on the best of the top 3 PCs, |r|", "0.81 (PC1)", 0.6),
    Check("pc2_arousal", "PC2 vs human arousal, |r|", "0.66", 0.4, absolute=True),
    Check("supervised_valence", "valence decoded (leave-one-emotion-out ridge), r", "-", 0.8),
    Check("family_ari", "k-means (k = 10) vs the study's families, ARI", "interpretable", 0.2),
    Check("sweeps", "severity sweeps, share of expected signs", "all", 0.75),
    Check(
        "implicit",
        "implicit scenarios, diagonal top-1 (read where held-out chat messages read best)",
        "strong diagonal",
        0.4,
    ),
    Check("heldout_top1", "held-out stories, top-1 of the file's emotions", "-", 0.1),
    Check("heldout_top5", "held-out stories, top-5", "-", 0.4),
    Check("other_top1", "other-style messages, top-1", "-", 0.1),
    Check("other_top5", "other-style messages, top-5", "-", 0.4),
]
FROM_RESULTS = [
    Check("steering_sentiment", "steering +happy minus +sad, VADER sentiment", "positive", 0.01),
    Check("preference_r", "probe vs Elo r (blissful)", "0.71", 0.5),
    Check("steering_elo_r", "steering Elo change vs probe-Elo r, across emotions", "0.85", 0.5),
    Check(
        "case_study",
        "case study: steered rate above unsteered (Wilson intervals apart)",
        "yes",
        0.5,
    ),
]


@cache
def heldout_messages() -> list[dict[str, str]]:
    """The other-style held-out set: short first-person messages and chat turns per emotion,
    never used to build vectors."""
    text = resources.files("emovec.data").joinpath("heldout").joinpath("messages.jsonl")
    return [json.loads(line) for line in text.read_text("utf-8").splitlines() if line.strip()]


def message_residuals(
    lm: LanguageModel, layers: Sequence[int], messages: Sequence[dict[str, str]]
) -> list[torch.Tensor]:
    """Each message's residual stream [tokens, layers, d_model] (batched passes), so that
    several vector files or methods can be scored on the same messages."""
    return sequence_residuals(lm, [lm.encode(m["text"]) for m in messages], layers)


def labelled(
    vectors: EmotionVectors, messages: Sequence[dict[str, str]]
) -> tuple[list[int], np.ndarray]:
    """Indices of the messages about an emotion of the file, and that emotion's index in it
    for each; an error when there are none."""
    keep = [i for i, m in enumerate(messages) if m["emotion"] in vectors.emotions]
    if not keep:
        raise ExperimentError("no held-out message is about an emotion of this vector file")
    return keep, np.array([vectors.emotions.index(messages[i]["emotion"]) for i in keep])


def classify_messages(
    vectors: EmotionVectors,
    layers: Sequence[int],
    cached: Sequence[torch.Tensor],
    messages: Sequence[dict[str, str]],
    pools: Sequence[str] = tuple(POOLS),
) -> dict[str, Any]:
    """Top-1/top-5 of classifying messages by ``read``'s summary, per pool and layer, from
    their residuals (:func:`message_residuals`; messages of emotions the file lacks are left
    out)."""
    keep, labels = labelled(vectors, messages)
    start = int(vectors.params.get("start_token", 50))
    summaries = {p: np.empty((len(keep), len(layers), len(vectors.emotions))) for p in pools}
    for li, layer in enumerate(layers):
        scorer = CosineScorer(vectors, layer=layer)
        for k, i in enumerate(keep):
            s = scorer(cached[i][:, li])
            for p in pools:
                summaries[p][k, li] = s[pooled_positions(len(s), start, p)].mean(axis=0)
    out: dict[str, Any] = {
        "layers": list(layers),
        "n": len(keep),
        "chance_top1": 1 / len(vectors.emotions),
    }
    for p in pools:
        out[p] = top_k_by_layer(summaries[p], labels)
    return out


def top_k_by_layer(summaries: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Top-1 and top-5 accuracy per layer of scores [n, layers, emotions] against labels [n]."""
    ranks = np.argsort(-summaries, axis=2)
    top1 = ranks[:, :, 0] == labels[:, None]
    top5 = (ranks[:, :, :5] == labels[:, None, None]).any(axis=2)
    return {k: v.mean(axis=0).round(4).tolist() for k, v in (("top1", top1), ("top5", top5))}


def chat_message_accuracy(
    vectors: EmotionVectors,
    layers: Sequence[int],
    cached: Sequence[tuple[torch.Tensor, tuple[int, int]]],
    messages: Sequence[dict[str, str]],
) -> dict[str, dict[str, list[float]]]:
    """Top-1/top-5 per layer of the other-style messages read as user turns, at each of
    :data:`POSITIONS` (``cached``: :func:`chat_residuals` of ``messages``). This held-out
    accuracy, not the scenarios' labels, decides where the implicit check reads."""
    keep, labels = labelled(vectors, messages)
    scores = scores_at_positions(vectors, layers, [cached[i] for i in keep])
    return {p: top_k_by_layer(scores[p], labels) for p in POSITIONS}


def reading_position(chat_accuracy: dict[str, dict[str, list[float]]], li: int) -> str:
    """The position whose held-out top-5 is higher at layer index ``li`` (ties: "message")."""
    return max(POSITIONS, key=lambda p: (chat_accuracy[p]["top5"][li], p == "message"))


def other_style_accuracy(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int] | None = None,
    pools: Sequence[str] = tuple(POOLS),
    messages: Sequence[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 of classifying other-style messages by ``read``'s summary, per pool and
    layer (messages of emotions the file lacks are left out, and never run)."""
    layers = list(vectors.layers) if layers is None else list(layers)
    messages = messages or heldout_messages()
    messages = [messages[i] for i in labelled(vectors, messages)[0]]
    cached = message_residuals(lm, layers, messages)
    return classify_messages(vectors, layers, cached, messages, pools)


#: Figures measured per layer beside the checks, so that a reader sees both reading positions.
EXTRA_KEYS = (
    "implicit_message",
    "implicit_reply_start",
    "sweeps_message",
    "chat_top5_message",
    "chat_top5_reply_start",
)


def layer_checks(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int],
    pool: str = "all",
    other: dict[str, list[float]] | None = None,
    progress: bool = False,
    chat: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, list[float]]:
    """Every cheap check's value at every layer, and :data:`EXTRA_KEYS` (``other`` and
    ``chat``: :func:`classify_messages`' top-1/top-5 for ``pool`` and
    :func:`chat_message_accuracy` already measured, to skip those passes; ``progress``: count
    the steps, minutes on a CPU)."""
    with count_progress(4 + len(layers), "scorecard", "steps", progress) as tick:
        return _layer_checks(lm, vectors, layers, pool, other, chat, tick)


def _layer_checks(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int],
    pool: str,
    other: dict[str, list[float]] | None,
    chat: dict[str, dict[str, list[float]]] | None,
    tick: Callable[[int], None],
) -> dict[str, list[float]]:
    """:func:`layer_checks`, calling ``tick(1)`` after each pass and each layer's geometry."""
    templates = list(sweeps.STUDY_SWEEPS)
    pick_emotions(
        vectors, sorted({e for t in templates for e in t.expect}), "the scorecard's sweeps"
    )
    pick_emotions(vectors, [e for e, _ in implicit.SCENARIOS], "the scorecard's implicit scenarios")
    per_template = sweeps.sweep_scores(lm, vectors, templates, layers)
    agreements = sweeps.agreement_by_layer(templates, per_template, vectors.emotions)
    by_message = sweeps.sweep_scores(lm, vectors, templates, layers, position="message")
    message_agreements = sweeps.agreement_by_layer(templates, by_message, vectors.emotions)
    tick(1)
    targets, scen = implicit.scenario_scores(lm, vectors, implicit.SCENARIOS, layers)
    strengths = {p: implicit.strength_by_layer(vectors, targets, s) for p, s in scen.items()}
    tick(1)
    messages: list[dict[str, str]] = []
    if other is None or chat is None:  # the passes still to run need the messages
        everything = heldout_messages()
        messages = [everything[i] for i in labelled(vectors, everything)[0]]
    if other is None:
        other = other_style_accuracy(lm, vectors, layers, (pool,), messages)[pool]
    tick(1)
    if chat is None:
        cached = chat_residuals(lm, [m["text"] for m in messages], layers)
        chat = chat_message_accuracy(vectors, layers, cached, messages)
    tick(1)
    rel = vectors.metrics.get("reliability") or {}
    held = vectors.metrics.get("heldout") or {}
    out: dict[str, list[float]] = {k: [] for k in [*(c.key for c in CHECKS), *EXTRA_KEYS]}
    for li, layer in enumerate(layers):
        out["reliability"].append(_at(rel, "vector", layer))
        geo = geometry.geometry_metrics(vectors, layer, n_init=3)
        lex = geo["lexicon"] or {}
        out["pc1_valence"].append(lex.get("pc1_valence", float("nan")))
        out["valence_top2"].append(
            max(abs(lex.get("pc1_valence", np.nan)), abs(lex.get("pc2_valence", np.nan)))
        )
        out["valence_top3"].append((lex.get("best_valence_top3") or {}).get("abs_r", np.nan))
        out["pc2_arousal"].append(lex.get("pc2_arousal", float("nan")))
        out["supervised_valence"].append((geo.get("supervised_valence") or {}).get("r", np.nan))
        out["family_ari"].append(geo["kmeans"]["ari"])
        out["sweeps"].append(agreements[li][0])
        out["sweeps_message"].append(message_agreements[li][0])
        out["implicit"].append(strengths[reading_position(chat, li)][li]["top1"])
        out["implicit_message"].append(strengths["message"][li]["top1"])
        out["implicit_reply_start"].append(strengths["reply-start"][li]["top1"])
        out["chat_top5_message"].append(chat["message"]["top5"][li])
        out["chat_top5_reply_start"].append(chat["reply-start"]["top5"][li])
        out["heldout_top1"].append(_at(held, "top1", layer))
        out["heldout_top5"].append(_at(held, "top5", layer))
        out["other_top1"].append(other["top1"][li])
        out["other_top5"].append(other["top5"][li])
        tick(1)
    return out


def _at(metrics: dict, key: str, layer: int) -> float:
    if key in metrics and layer in metrics.get("layers", []):
        return float(metrics[key][metrics["layers"].index(layer)])
    return float("nan")


def verdict(check: Check, value: float | None) -> str:
    """'pass', 'fail' or 'not run' against the check's threshold."""
    if value is None or not np.isfinite(value):
        return "not run"
    v = abs(value) if check.absolute else value
    return "pass" if v >= check.threshold else "fail"


def results_checks(results_dir: str | Path | None) -> dict[str, float | None]:
    """Checks read from a main-job folder: steering sentiment, preferences, case studies."""
    found: dict[str, float | None] = {c.key: None for c in FROM_RESULTS}
    if results_dir is None:
        return found
    root = Path(results_dir)
    try:
        steer = json.loads((root / "steering_sentiment.json").read_text())
        means = steer["mean_sentiment"]
        found["steering_sentiment"] = float(means["+happy"]) - float(means["+sad"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        prefs = json.loads((root / "experiments" / "preferences" / "result.json").read_text())
        found["preference_r"] = float(prefs["metrics"]["probe_elo_r"]["blissful"])
        found["steering_elo_r"] = float(prefs["metrics"]["steering_vs_correlation_r"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    separated = []
    for folder in (
        sorted((root / "studies").glob("*/result.json")) if (root / "studies").is_dir() else []
    ):
        try:
            conditions = json.loads(folder.read_text())["conditions"]
            base = next(c for c in conditions if c["condition"] == "none")
            steered = [c for c in conditions if c["condition"] != "none"]
            separated += [float(c["ci95"][0] > base["ci95"][1]) for c in steered]
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            continue
    if separated:
        found["case_study"] = float(np.mean(separated))
    return found


def run_scorecard(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int] | None = None,
    results_dir: str | Path | None = None,
    pool: str = "all",
    progress: bool = False,
) -> Result:
    """Every check per layer, and the verdicts at the default layer (``progress``: show the
    steps of the per-layer checks)."""
    check_compatible(lm, vectors)
    layers = (
        list(vectors.layers)
        if layers is None
        else [vectors.layers[vectors.layer_index(x)] for x in layers]
    )
    if vectors.default_layer not in layers:
        layers = sorted({*layers, vectors.default_layer})
    per_layer = layer_checks(lm, vectors, layers, pool, progress=progress)
    at = layers.index(vectors.default_layer)
    extra = results_checks(results_dir)
    rows, metrics = [], {}
    for check in CHECKS:
        value = per_layer[check.key][at]
        metrics[check.key] = value
        rows.append(
            [
                check.label,
                _fmt(value),
                check.study,
                f">= {check.threshold:g}",
                verdict(check, value),
            ]
        )
    for check in FROM_RESULTS:
        value = extra[check.key]
        metrics[check.key] = value
        threshold = f">= {check.threshold:g}"
        rows.append([check.label, _fmt(value), check.study, threshold, verdict(check, value)])
    passed = sum(r[-1] == "pass" for r in rows)
    ran = sum(r[-1] != "not run" for r in rows)
    result = Result(
        "scorecard",
        "Scorecard: the study's checks",
        order=2,
        summary=f"{passed} of {ran} checks pass at the default layer {vectors.default_layer} "
        f"({len(rows) - ran} not run); model {vectors.model.get('name')}, corpus "
        f"{vectors.corpus.get('source')}, method "
        f"denoise={vectors.params.get('denoise', 'dialogues')}, "
        f"reader={vectors.params.get('reader', 'mean')}.",
        settings={
            "layer": vectors.default_layer,
            "layers": layers,
            "pool": pool,
            "model": vectors.model.get("name"),
            "corpus": vectors.corpus,
            "method": {
                k: vectors.params.get(k)
                for k in ("denoise", "reader", "shrinkage", "neutral_variance")
            },
        },
        metrics=metrics,
        data={
            "per_layer": {
                k: [None if not np.isfinite(v) else round(float(v), 4) for v in vals]
                for k, vals in per_layer.items()
            }
        },
    )
    result.add_table(
        f"Checks at the default layer {vectors.default_layer}",
        ["check", "ours", "study", "threshold", "verdict"],
        rows,
    )
    result.add_table(
        "Per layer",
        ["layer", *[c.key for c in CHECKS]],
        [[layer, *[_fmt(per_layer[c.key][i]) for c in CHECKS]] for i, layer in enumerate(layers)],
    )
    result.add_figure(
        _plot(layers, per_layer, vectors.default_layer),
        "scorecard.png",
        "Each check per layer (dashed: its threshold); the red line is the default layer.",
    )
    return result


def _fmt(value: float | None) -> str:
    return (
        "-"
        if value is None or not np.isfinite(value)
        else f"{value:+.3f}"
        if value < 0
        else f"{value:.3f}"
    )


def _plot(layers, per_layer, default_layer):
    plt = pyplot()
    keys = [c for c in CHECKS if any(np.isfinite(per_layer[c.key]))]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, check in zip(axes.flat, keys, strict=False):
        values = np.asarray(per_layer[check.key], dtype=float)
        ax.plot(layers, np.abs(values) if check.absolute else values, marker=".")
        ax.axhline(check.threshold, ls="--", color="grey")
        ax.axvline(default_layer, color="red", alpha=0.4)
        ax.set_title(check.key, fontsize=9)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
