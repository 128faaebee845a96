"""Compare emotion vectors from a self-written corpus with those from the curated corpus.

    python scripts/compare_corpora.py data/selfwritten \\
        --curated-vectors emovec-out/smollm2-135m-instruct/vectors.safetensors \\
        --figures docs/figures --json docs/figures/selfwritten_comparison.json

At the curated vectors' reading layer it measures: per-emotion cosine between the two sets of
vectors (against the cosine of mismatched pairs), held-out accuracy of the self-written vectors
(the first story of every emotion with two or more is held out), cross-corpus classification
(self-written vectors label one curated story per emotion; curated vectors label the
self-written stories), and geometry (share of variance on PC1/PC2, correlation of PC1 scores,
correlation of the two emotion-by-emotion similarity matrices).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emovec.corpus import load_corpus
from emovec.extraction import (
    ExtractionSettings,
    finish_vectors,
    heldout_accuracy,
    neutral_components,
    pooled_activations,
)
from emovec.models import load_model
from emovec.vectors import EmotionVectors


def build(pooled: torch.Tensor, labels: list[int], n_e: int, neutral: torch.Tensor):
    """Unit vectors [E, d] and grand mean [d] from pooled story activations [N, d]."""
    sums = torch.zeros(1, n_e, pooled.shape[1], dtype=torch.float64)
    counts = torch.zeros(n_e, dtype=torch.float64)
    idx = torch.tensor(labels)
    sums[0].index_add_(0, idx, pooled.double())
    counts.index_add_(0, idx, torch.ones(len(labels), dtype=torch.float64))
    x = neutral.double()
    scatter = (x.T @ x).unsqueeze(0)
    bases = neutral_components(scatter, x.sum(0).unsqueeze(0), len(x), 0.5)
    vectors, grand = finish_vectors(sums, counts, bases)
    return vectors[0], grand[0], counts


def accuracy(vectors, grand, pooled, labels) -> dict[str, float]:
    acc = heldout_accuracy(vectors[None], grand[None], pooled[:, None], torch.tensor(labels))
    return {"top1": acc["top1"][0], "top5": acc["top5"][0], "n": len(labels)}


def pca(v: np.ndarray, k: int = 2):
    centred = v - v.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = (s**2 / (s**2).sum())[:k]
    return centred @ vt[:k].T, share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--curated-vectors", type=Path, required=True)
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--prepare-only", action="store_true", help="Only fill --cache.")
    ap.add_argument("--cache", type=Path, default=None, help="Keep pooled curated activations.")
    args = ap.parse_args()
    if args.prepare_only:
        _prepare(args)
        return

    curated_vectors = EmotionVectors.load(args.curated_vectors)
    layer = curated_vectors.default_layer
    lm = load_model(curated_vectors.model["name"])
    settings = ExtractionSettings(batch_size=16)
    own = load_corpus(args.corpus)
    emotions = curated_vectors.emotions
    index = {e: i for i, e in enumerate(emotions)}
    neutral_texts = own.neutral_texts()
    neutral_source = "self-written"
    if len(neutral_texts) < 10:
        neutral_texts, neutral_source = load_corpus("curated").neutral_texts(), "curated"

    def pool(texts, name: str | None = None):
        if args.cache and name:
            path = args.cache / f"{name}-{lm.fingerprint}-{layer}.pt"
            if path.exists():
                return torch.load(path)
        x = pooled_activations(lm, texts, [layer], settings)[:, 0]
        if args.cache and name:
            args.cache.mkdir(parents=True, exist_ok=True)
            torch.save(x, path)
        return x

    stories = own.stories
    labels = [index[s["emotion"]] for s in stories]
    x_self = pool([s["text"] for s in stories])
    x_neutral = pool(neutral_texts, "curated-neutral" if neutral_source == "curated" else None)
    v_self, g_self, counts = build(x_self, labels, len(emotions), x_neutral)
    present = [i for i in range(len(emotions)) if counts[i] > 0]

    # Held out: the first story of each emotion that has two or more.
    first: dict[int, int] = {}
    for n, lab in enumerate(labels):
        first.setdefault(lab, n)
    held = [n for lab, n in first.items() if counts[lab] >= 2]
    train = [n for n in range(len(stories)) if n not in set(held)]
    v_tr, g_tr, c_tr = build(x_self[train], [labels[n] for n in train], len(emotions), x_neutral)
    missing = (c_tr == 0).nonzero().flatten()
    v_tr[missing] = 0  # emotions without training stories cannot win
    heldout_self = (
        accuracy(v_tr, g_tr, x_self[held], [labels[n] for n in held])
        if held
        else {"top1": None, "top5": None, "n": 0, "why": "no emotion has two stories"}
    )

    # Cross-corpus: one curated story per emotion (the first), and every self-written story.
    curated = load_corpus("curated")
    probe = [curated.stories_of(e)[0] for e in emotions]
    x_probe = pool([s["text"] for s in probe], "curated-probe")
    v_cur = curated_vectors.vectors[curated_vectors.layer_index(layer)].float()
    g_cur = curated_vectors.mean_activation[curated_vectors.layer_index(layer)].float()
    v_self_masked = v_self.clone()
    v_self_masked[(counts == 0).nonzero().flatten()] = 0
    self_on_curated = accuracy(v_self_masked, g_self, x_probe, list(range(len(emotions))))
    curated_on_self = accuracy(v_cur, g_cur, x_self, labels)

    a, b = v_self[present].numpy(), v_cur[present].numpy()
    diag = (a * b).sum(1)
    cross = a @ b.T
    off = cross[~np.eye(len(present), dtype=bool)]
    matched = float((cross.argmax(1) == np.arange(len(present))).mean())
    p_self, share_self = pca(a)
    p_cur, share_cur = pca(b)
    r_pc1 = float(np.corrcoef(p_self[:, 0], p_cur[:, 0])[0, 1])
    if r_pc1 < 0:
        p_self[:, 0] *= -1
        r_pc1 = -r_pc1
    sim_a, sim_b = a @ a.T, b @ b.T
    upper = np.triu_indices(len(present), 1)
    r_sim = float(np.corrcoef(sim_a[upper], sim_b[upper])[0, 1])

    result = {
        "layer": layer,
        "self_written": {
            "stories": len(stories),
            "emotions": len(present),
            "neutral": len(neutral_texts),
            "neutral_source": neutral_source,
            "source": own.source,
            "hash": own.hash,
        },
        "per_emotion_cosine": {
            "mean": float(diag.mean()),
            "median": float(np.median(diag)),
            "min": float(diag.min()),
            "max": float(diag.max()),
            "mismatched_pairs_mean": float(off.mean()),
            "nearest_curated_is_same_emotion": matched,
        },
        "heldout_self": heldout_self,
        "heldout_curated": {
            k: curated_vectors.metrics["heldout"][k][
                curated_vectors.metrics["heldout"]["layers"].index(layer)
            ]
            for k in ("top1", "top5")
        }
        | {"n": curated_vectors.metrics["heldout"]["n_heldout"]},
        "self_vectors_on_curated_stories": self_on_curated,
        "curated_vectors_on_self_stories": curated_on_self,
        "chance_top1": 1 / len(emotions),
        "geometry": {
            "pc_share_self": share_self.tolist(),
            "pc_share_curated": share_cur.tolist(),
            "pc1_correlation": r_pc1,
            "similarity_matrix_correlation": r_sim,
        },
        "best_matched": [present_name for present_name in _top(emotions, present, diag, True)],
        "worst_matched": [present_name for present_name in _top(emotions, present, diag, False)],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    _figures(args.figures, emotions, present, diag, off, p_self, p_cur, share_self, share_cur)


def _prepare(args) -> None:
    """Pool the curated probe stories and neutral dialogues into the cache ahead of time."""
    vectors = EmotionVectors.load(args.curated_vectors)
    layer, lm = vectors.default_layer, load_model(vectors.model["name"])
    curated = load_corpus("curated")
    jobs = {
        "curated-probe": [curated.stories_of(e)[0]["text"] for e in vectors.emotions],
        "curated-neutral": curated.neutral_texts(),
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    for name, texts in jobs.items():
        path = args.cache / f"{name}-{lm.fingerprint}-{layer}.pt"
        if not path.exists():
            x = pooled_activations(lm, texts, [layer], ExtractionSettings(batch_size=16))[:, 0]
            torch.save(x, path)


def _top(emotions, present, diag, best: bool, k: int = 8) -> list[str]:
    order = np.argsort(-diag if best else diag)[:k]
    return [f"{emotions[present[i]]} {diag[i]:+.2f}" for i in order]


def _figures(folder: Path, emotions, present, diag, off, p_self, p_cur, share_self, share_cur):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emovec import catalog

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(-0.6, 1.0, 41)
    ax.hist(off, bins=bins, density=True, alpha=0.5, label="different emotions")
    ax.hist(diag, bins=bins, density=True, alpha=0.7, label="same emotion")
    ax.set_xlabel("cosine(self-written vector, curated vector)")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Per-emotion agreement of the two corpora's vectors")
    fig.tight_layout()
    fig.savefig(folder / "selfwritten_cosine.png", dpi=120)
    plt.close(fig)

    families = catalog.families()
    family_of = {e: f for f, members in families.items() for e in members}
    colours = {f: plt.cm.tab10(i) for i, f in enumerate(families)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, pts, share, title in (
        (axes[0], p_cur, share_cur, "curated corpus"),
        (axes[1], p_self, share_self, "self-written corpus"),
    ):
        for i, e in enumerate(present):
            name = emotions[e]
            ax.scatter(pts[i, 0], pts[i, 1], s=12, color=colours[family_of[name]])
        for i, e in enumerate(present):
            if emotions[e] in {"happy", "sad", "afraid", "calm", "angry", "proud", "lonely"}:
                ax.annotate(emotions[e], pts[i], fontsize=8)
        ax.set_xlabel(f"PC1 ({share[0]:.0%})")
        ax.set_ylabel(f"PC2 ({share[1]:.0%})")
        ax.set_title(title)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(folder / "selfwritten_geometry.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
