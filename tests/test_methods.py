"""Method options against synthetic data with a known answer, and the reliability arithmetic.

The planted structure: every emotion has a valence along one axis, and stories of one
emotion vary far more along a nuisance axis (their topic). With a few stories per emotion
the class means scatter more along the nuisance axis than along valence, so plain PCA of the
vectors finds the nuisance first. Each method option must recover valence as PC1.
"""

import math

import numpy as np
import pytest
import torch

from emovec.extraction import (
    DENOISE,
    GEOMETRY,
    READERS,
    ExtractionSettings,
    axis_replication,
    build_directions,
    cross_covariance_axes,
    half_directions,
    neutral_components,
    split_half_reliability,
    story_halves,
    top_components,
    within_covariance,
)
from emovec.stats import spearman_brown

D, E, N = 24, 40, 4  # width, emotions, stories per emotion


def planted(seed: int = 0):
    """Stories x[e, s] = valence_e * a + 0.3 * identity_e + 6 * topic_(e,s) * b + noise,
    one layer (identity_e: each emotion's own direction, away from a and b)."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.normal(size=(D, D)))
    a, b = axes[:, 0], axes[:, 1]
    valence = rng.uniform(-1, 1, E)
    topic = rng.normal(size=(E, N))
    identity = rng.normal(size=(E, D - 2)) @ axes[:, 2:].T / np.sqrt(D - 2)
    x = (
        valence[:, None, None] * a
        + 0.3 * identity[:, None, :]
        + 6.0 * topic[:, :, None] * b
        + 0.05 * rng.normal(size=(E, N, D))
    )
    stories = torch.tensor(x).reshape(E * N, D)
    labels = torch.arange(E).repeat_interleave(N)
    sums = torch.zeros(1, E, D, dtype=torch.float64).index_add_(1, labels, stories[None])
    counts = torch.full((E,), float(N), dtype=torch.float64)
    scatter = (stories.T @ stories)[None]
    neutral = torch.tensor(6.0 * rng.normal(size=(200, 1)) * b + 0.05 * rng.normal(size=(200, D)))
    clean = torch.tensor(N * (valence[:, None] * a + 0.3 * identity))[None]
    return sums, counts, scatter, valence, neutral, clean


def oracle_r(seed: int = 0) -> float:
    """PC1-valence r of unit vectors from the noise-free class means (unit length bends the
    valence scale a little, so even a perfect method stays a bit below 1)."""
    _, counts, _, valence, _, clean = planted(seed)
    return pc1_valence_r(build_directions(clean, counts, no_basis()).vectors, valence)


def pc1_valence_r(directions: torch.Tensor, valence: np.ndarray) -> float:
    x = directions[0].double().numpy()
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return abs(float(np.corrcoef(x @ vt[0], valence)[0, 1]))


def no_basis() -> list[torch.Tensor]:
    return [torch.zeros(D, 0, dtype=torch.float64)]


def test_plain_vectors_put_the_nuisance_first():
    sums, counts, _, valence, _, _ = planted()
    plain = build_directions(sums, counts, no_basis())
    assert pc1_valence_r(plain.vectors, valence) < 0.5  # the trap the methods must avoid


def test_whitened_readers_recover_the_planted_valence_as_pc1():
    sums, counts, scatter, valence, _, _ = planted()
    within = within_covariance(scatter, sums, counts)
    built = build_directions(sums, counts, no_basis(), within, shrinkage=0.1)
    assert built.readers is not None
    assert pc1_valence_r(built.readers, valence) > max(0.95, oracle_r() - 0.02)
    assert torch.allclose(built.readers.norm(dim=-1), torch.ones(1, E), atol=1e-5)
    assert pc1_valence_r(built.vectors, valence) < 0.5  # steering vectors are left as they are


def test_within_emotion_denoising_recovers_valence():
    sums, counts, scatter, valence, _, _ = planted()
    within = within_covariance(scatter, sums, counts)
    basis = top_components(within[0], 0.5)
    assert basis.shape[1] == 1  # the nuisance axis holds nearly all within-emotion variance
    built = build_directions(sums, counts, [basis])
    assert pc1_valence_r(built.vectors, valence) > max(0.95, oracle_r() - 0.02)


def test_neutral_denoising_recovers_valence():
    sums, counts, _, valence, neutral, _ = planted()
    scatter = (neutral.T @ neutral)[None]
    bases = neutral_components(scatter, neutral.sum(0)[None], len(neutral), 0.5)
    built = build_directions(sums, counts, bases)
    assert pc1_valence_r(built.vectors, valence) > max(0.95, oracle_r() - 0.02)


def test_within_covariance_matches_numpy():
    sums, counts, scatter, _, _, _ = planted(1)
    within = within_covariance(scatter, sums, counts)[0].numpy()
    rng = np.random.default_rng(1)  # rebuild the same stories
    axes, _ = np.linalg.qr(rng.normal(size=(D, D)))
    valence = rng.uniform(-1, 1, E)
    topic = rng.normal(size=(E, N))
    identity = rng.normal(size=(E, D - 2)) @ axes[:, 2:].T / np.sqrt(D - 2)
    x = valence[:, None, None] * axes[:, 0] + 0.3 * identity[:, None, :]
    x = x + 6.0 * topic[:, :, None] * axes[:, 1] + 0.05 * rng.normal(size=(E, N, D))
    resid = (x - x.mean(axis=1, keepdims=True)).reshape(-1, D)
    np.testing.assert_allclose(within, resid.T @ resid / (E * N - E), rtol=1e-8, atol=1e-10)


def test_spearman_brown_and_split_half_by_hand():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.0) == 0.0 and spearman_brown(1.0) == 1.0
    # Three emotions in 2-D, one layer; halves chosen so every quantity is easy by hand.
    half_a = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]]], dtype=torch.float64)
    half_b = torch.tensor([[[2.0, 1.0], [0.0, 2.0], [-2.0, -3.0]]], dtype=torch.float64)
    half_sums = torch.stack([half_a, half_b])
    half_counts = torch.ones(2, 3, dtype=torch.float64)
    a_dirs, b_dirs, both = half_directions(
        half_sums, half_counts, [torch.zeros(2, 0, dtype=torch.float64)]
    )
    assert bool(both.all())
    rel = split_half_reliability(a_dirs, b_dirs)

    # centred halves: a = [2,0],[0,2],[-2,-2] (mean 0); b = [2,1],[0,2],[-2,-3] (mean 0)
    def unit(v):
        v = np.array(v, dtype=float)
        return v / np.linalg.norm(v)

    a = [unit(v) for v in ([2, 0], [0, 2], [-2, -2])]
    b = [unit(v) for v in ([2, 1], [0, 2], [-2, -3])]
    r = float(np.mean([np.dot(x, y) for x, y in zip(a, b, strict=True)]))
    assert rel["vector_half"][0] == pytest.approx(r, abs=1e-4)
    assert rel["vector"][0] == pytest.approx(2 * r / (1 + r), abs=1e-4)
    sim_a = [np.dot(a[0], a[1]), np.dot(a[0], a[2]), np.dot(a[1], a[2])]
    sim_b = [np.dot(b[0], b[1]), np.dot(b[0], b[2]), np.dot(b[1], b[2])]
    g = float(np.corrcoef(sim_a, sim_b)[0, 1])
    assert rel["geometry_half"][0] == pytest.approx(g, abs=1e-4)
    assert rel["geometry"][0] == pytest.approx(2 * g / (1 + g), abs=1e-4)
    assert math.isclose(rel["n_emotions"], 3)


def test_story_halves_split_a_crossed_design_by_topic():
    crossed = [{"emotion": e, "topic": t} for e in ("a", "b") for t in ("t1", "t2", "t3", "t4")]
    halves, how = story_halves(crossed)
    assert how == "topics" and halves == [0, 1, 0, 1, 0, 1, 0, 1]
    ragged = [
        {"emotion": "a", "topic": "t1"},
        {"emotion": "a", "topic": "t2"},
        {"emotion": "b", "topic": "t3"},
        {"emotion": "b", "topic": "t1"},
    ]
    halves, how = story_halves(ragged)
    assert how == "alternate" and halves == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("field", "value", "choices"),
    [("denoise", "pca", DENOISE), ("reader", "lda", READERS)],
)
def test_unknown_method_names_are_refused_with_the_choices(field, value, choices):
    settings = ExtractionSettings(**{field: value})
    with pytest.raises(ValueError) as info:
        settings.check()
    assert value in str(info.value)
    assert all(choice in str(info.value) for choice in choices)
    with pytest.raises(ValueError, match="shrinkage"):
        ExtractionSettings(shrinkage=0.0).check()


def planted_halves(seed: int, emotions: int = 120, d: int = 24):
    """Two halves' class means: valence along one axis (shared by both halves) plus sampling
    noise in three nuisance dimensions, drawn independently for each half, with about three
    times valence's variance."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.normal(size=(d, d)))
    valence = rng.uniform(-1, 1, emotions)
    identity = 0.2 * rng.normal(size=(emotions, d - 4)) @ axes[:, 4:].T
    halves = [
        valence[:, None] * axes[:, 0] + identity + rng.normal(size=(emotions, 3)) @ axes[:, 1:4].T
        for _ in range(2)
    ]
    half_sums = torch.tensor(np.stack(halves))[:, None]  # [2, L=1, E, d], one story per half
    return half_sums, torch.ones(2, emotions, dtype=torch.float64), valence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_half_geometry_finds_the_planted_valence_that_pca_misses(seed):
    half_sums, half_counts, valence = planted_halves(seed)
    a, b, _ = half_directions(half_sums, half_counts, [torch.zeros(24, 0, dtype=torch.float64)])
    pooled = ((a[0] + b[0]) / 2).numpy()
    centred = pooled - pooled.mean(0)
    pca_axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    assert abs(np.corrcoef(centred @ pca_axis, valence)[0, 1]) < 0.5  # PCA: a nuisance axis
    scores, ratios, axes = cross_covariance_axes(a[0], b[0], k=5)
    assert scores.shape == (120, 5) and ratios.shape == (5,) and axes.shape == (24, 5)
    assert bool((ratios[:-1] >= ratios[1:]).all()) and float(ratios.sum()) <= 1 + 1e-9
    assert abs(np.corrcoef(scores[:, 0].numpy(), valence)[0, 1]) > 0.9
    # The label-free criterion sees it too: the cross-covariance axis replicates across
    # halves, the noise axis PCA found does not.
    split = axis_replication(a[0], b[0], axes[:, :1])[0]
    plain = axis_replication(a[0], b[0], torch.tensor(pca_axis)[:, None])[0]
    assert split > 0.9 and plain < split - 0.3


def test_split_half_geometry_is_stored_and_used(lm, small_corpus, tmp_path):
    from emovec.experiments.geometry import geometry_metrics
    from emovec.extraction import extract
    from emovec.vectors import EmotionVectors

    cache = tmp_path / "cache"
    built = extract(lm, small_corpus, layers=[3, 5], cache=cache)  # split-half: the default
    assert built.geometry_scores is not None
    assert built.geometry_scores.shape[:2] == (2, len(built.emotions))
    assert built.metrics["geometry"]["layers"] == [3, 5]
    loaded = EmotionVectors.load(built.save(tmp_path / "v.safetensors"))
    assert torch.equal(loaded.geometry_scores, built.geometry_scores)
    m = geometry_metrics(loaded, 5)
    assert m["method"] == "split-half"
    np.testing.assert_allclose(
        np.abs(m["scores"][:, 0]), np.abs(loaded.geometry_scores[1, :, 0].numpy()), rtol=1e-5
    )
    plain = extract(lm, small_corpus, layers=[3, 5], cache=cache, geometry="pca")
    assert plain.geometry_scores is None and geometry_metrics(plain, 5)["method"] == "pca"
    assert plain.metrics["geometry"]["replication"]["pca"]  # both recorded, whichever is used
    # One story per emotion: no halves to compare, so the default falls back to PCA, saying so.
    one_each = small_corpus.subset(small_corpus.emotions[:4])
    one_each.stories = [one_each.stories_of(e)[0] for e in one_each.emotions]
    fallback = extract(lm, one_each, layers=[5], cache=cache)
    assert fallback.params["geometry"] == "pca" and fallback.geometry_scores is None
    assert "split-half" in fallback.metrics["geometry_fallback"]


def test_unknown_geometry_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown geometry method 'ica'.*split-half"):
        ExtractionSettings(geometry="ica").check()
    assert set(GEOMETRY) == {"pca", "split-half"}
