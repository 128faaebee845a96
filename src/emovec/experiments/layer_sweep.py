"""Every metric of the other experiments at every layer, in one figure: which layer to use.

Forward passes are shared: the sweep and scenario prompts run once, read at all layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emovec.experiments import geometry, implicit, logit_lens, sweeps
from emovec.experiments.common import pick_emotions
from emovec.experiments.result import Result, pyplot
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

LABELS = {
    "heldout_top1": "held-out story top-1",
    "sweep_agreement": "sweeps: right sign",
    "sweep_signed_rho": "sweeps: mean signed rho",
    "implicit_top1": "implicit: diagonal top-1",
    "implicit_margin": "implicit: diagonal - off",
    "pc1_valence": "r(PC1, valence)",
    "pc2_arousal": "r(PC2, arousal)",
    "kmeans_ari": "k-means ARI vs families",
    "lens_hit_rate": "logit lens: own stem in top 20",
}


def layer_metrics(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int] | None = None,
    templates: Sequence[sweeps.SweepTemplate] | None = None,
    scenarios: Sequence[tuple[str, str]] = implicit.SCENARIOS,
) -> dict[str, list[float]]:
    """{metric: value per layer} for every metric that can be computed from these vectors."""
    layers = list(vectors.layers) if layers is None else list(layers)
    templates = list(sweeps.STUDY_SWEEPS if templates is None else templates)
    pick_emotions(vectors, sorted({e for t in templates for e in t.expect}), "the layer sweep")
    out: dict[str, list[float]] = {k: [] for k in LABELS}
    held = vectors.metrics.get("heldout")
    per_template = sweeps.sweep_scores(lm, vectors, templates, layers)
    agreements = sweeps.agreement_by_layer(templates, per_template, vectors.emotions)
    targets, scen = implicit.scenario_scores(lm, vectors, scenarios, layers)
    strengths = implicit.strength_by_layer(vectors, targets, scen["message"])
    for li, layer in enumerate(layers):
        if held and layer in held["layers"]:
            out["heldout_top1"].append(held["top1"][held["layers"].index(layer)])
        else:
            out["heldout_top1"].append(float("nan"))
        share, signed = agreements[li]
        out["sweep_agreement"].append(share)
        out["sweep_signed_rho"].append(signed)
        strength = strengths[li]
        out["implicit_top1"].append(strength["top1"])
        out["implicit_margin"].append(strength["diagonal_minus_off"])
        geo = geometry.geometry_metrics(vectors, layer, n_init=3)
        lex = geo["lexicon"] or {}
        out["pc1_valence"].append(lex.get("pc1_valence", float("nan")))
        out["pc2_arousal"].append(lex.get("pc2_arousal", float("nan")))
        out["kmeans_ari"].append(geo["kmeans"]["ari"])
        out["lens_hit_rate"].append(logit_lens.hit_rate(lm, vectors, layer))
    return {k: v for k, v in out.items() if not all(np.isnan(v))}


def combined_score(metrics: dict[str, list[float]]) -> np.ndarray:
    """Mean over metrics of each metric min-max scaled to 0..1 across layers."""
    rows = []
    for values in metrics.values():
        v = np.asarray(values, dtype=float)
        lo, hi = np.nanmin(v), np.nanmax(v)
        rows.append((v - lo) / (hi - lo) if hi > lo else np.zeros_like(v))
    return np.nanmean(np.stack(rows), axis=0)


def run_layer_sweep(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layers: Sequence[int] | None = None,
    templates: Sequence[sweeps.SweepTemplate] | None = None,
) -> Result:
    """All metrics per layer; the default layer's standing on each of them."""
    vectors.check_model(lm)
    layers = list(vectors.layers) if layers is None else list(layers)
    for layer in layers:
        vectors.layer_index(layer)
    metrics = layer_metrics(lm, vectors, layers, templates)
    combined = combined_score(metrics)
    best = layers[int(np.nanargmax(combined))]
    default = vectors.default_layer
    result = Result(
        "layer_sweep",
        "Layer sweep",
        order=50,
        settings={
            "layers": layers,
            "default_layer": default,
            "steer_layer": vectors.default_steer_layer,
        },
        metrics={
            "per_layer": metrics,
            "combined": combined.round(4).tolist(),
            "best_combined": best,
        },
    )
    rows = []
    for key, values in metrics.items():
        v = np.asarray(values, dtype=float)
        at = v[layers.index(default)] if default in layers else float("nan")
        rank = 1 + int((v > at).sum()) if default in layers else None
        rows.append(
            [
                LABELS[key],
                layers[int(np.nanargmax(v))],
                round(float(np.nanmax(v)), 3),
                round(float(at), 3),
                rank,
            ]
        )
    result.add_table(
        f"Best layer per metric, and the default layer ({default})",
        [
            "metric",
            "best layer",
            "best value",
            f"at layer {default}",
            f"rank of layer {default} (of {len(layers)})",
        ],
        rows,
    )
    if default in layers:
        rank = 1 + int((combined > combined[layers.index(default)]).sum())
        result.compare(
            "layer with the best combined score",
            best,
            "~2/3 depth",
            f"default layer {default} ranks {rank} of {len(layers)} on it",
        )
    result.summary = (
        f"{len(metrics)} metrics at {len(layers)} layers. The combined score (each metric scaled "
        f"0-1 across layers, averaged) peaks at layer {best}; the default layer is {default}."
    )
    plt = pyplot()
    n = len(metrics)
    cols = 3
    rows_n = (n + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 2.6 * rows_n), squeeze=False)
    for ax, (key, values) in zip(
        axes.flat, [*metrics.items(), ("combined", combined)], strict=False
    ):
        ax.plot(layers, values, marker=".")
        ax.axvline(default, color="red", alpha=0.4)
        ax.set_title(LABELS.get(key, "combined score"), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n + 1 :]:
        ax.axis("off")
    fig.supxlabel("layer")
    fig.tight_layout()
    result.add_figure(
        fig,
        "layer_sweep.png",
        f"Every metric per layer; the red line is the default layer ({default}).",
    )
    return result
