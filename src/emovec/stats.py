"""Small statistics for putting our figures beside the study's: how sure is a correlation?

:func:`correlation_ci` is the 95% interval of a correlation from ``n`` pairs by Fisher's z
transform, ``tanh(atanh(r) +/- z_0.975 * se)`` with ``se = 1/sqrt(n - 3)`` (Pearson) or
``sqrt(1.06/(n - 3))`` (Spearman, Fieller, Hartley & Pearson 1957). Below :data:`MIN_N` pairs
no interval is given: :func:`describe_correlation` says "too few to say" instead.

Rates get Wilson score intervals (:func:`wilson_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from emovec.errors import InputError

#: z for a two-sided 95% interval
Z95 = NormalDist().inv_cdf(0.975)
#: Fewest pairs for which a correlation gets an interval (and is worth comparing at all).
MIN_N = 5
TOO_FEW = "too few to say"


def correlation_ci(
    r: float | None, n: int, method: str = "pearson", z: float = Z95
) -> tuple[float, float] | None:
    """95% interval (Fisher z) of a correlation ``r`` from ``n`` pairs; None below MIN_N pairs
    or when ``r`` is not a finite number."""
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if n < MIN_N or r is None or not math.isfinite(r):
        return None
    if not -1 <= r <= 1:
        raise InputError(f"a correlation lies in [-1, 1], got {r}")
    if abs(r) == 1:
        return (float(r), float(r))
    se = math.sqrt((1.06 if method == "spearman" else 1.0) / (n - 3))
    centre = math.atanh(r)
    return (math.tanh(centre - z * se), math.tanh(centre + z * se))


def describe_correlation(r: float | None, n: int, method: str = "pearson") -> str:
    """``"n = 12, 95% CI [+0.31, +0.85]"``, or ``"n = 3: too few to say"`` below MIN_N."""
    if n < MIN_N:
        return f"n = {n}: {TOO_FEW}"
    ci = correlation_ci(r, n, method)
    if ci is None:
        return f"n = {n}, no interval (r undefined)"
    return f"n = {n}, 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def shown_correlation(r: float | None, n: int, digits: int = 3) -> float | str | None:
    """What goes in an 'ours' cell: the rounded r, or "too few to say" below MIN_N pairs."""
    if n < MIN_N:
        return TOO_FEW
    if r is None or not math.isfinite(r):
        return None
    return round(r, digits)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; stays inside [0, 1] and is sane at 0 or n."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise InputError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --------------------------------------------------------------------------- correlations


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson r of two sequences (nan when either is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two sequences."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def spearman_columns(x: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of ``x`` [n] with every column of ``y`` [n, k] (ties averaged)."""
    from scipy.stats import rankdata

    rx = rankdata(x)
    ry = np.apply_along_axis(rankdata, 0, y)
    rx = (rx - rx.mean()) / (np.linalg.norm(rx - rx.mean()) or 1)
    ry = ry - ry.mean(0)
    norms = np.linalg.norm(ry, axis=0)
    norms[norms == 0] = 1
    return rx @ (ry / norms)


def spearman_brown(r: float) -> float:
    """Reliability of the whole from the correlation between two halves: 2r / (1 + r)."""
    return 2 * r / (1 + r) if r > -1 else float("nan")


# --------------------------------------------------------------------------- Bradley-Terry

#: Elo scale: 400 points per factor of 10 in odds, centred on 1500.
ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1500.0


def fit_bradley_terry(
    n: int, pairs: Sequence[tuple[int, int]], margins: np.ndarray, l2: float = 1e-3
) -> tuple[np.ndarray, float]:
    """Elo per item and the letter bias from soft outcomes sigmoid(logit A - logit B).

    Model: P(choose A) = sigmoid(r_a - r_b + bias); ratings are centred, then put on the Elo
    scale (400 / ln 10 per unit, mean 1500). Items never compared keep the mean.
    """
    from scipy.optimize import minimize

    a = np.array([x for x, _ in pairs])
    b = np.array([y for _, y in pairs])
    target = 1 / (1 + np.exp(-np.asarray(margins, dtype=np.float64)))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        r, bias = theta[:n], theta[n]
        z = r[a] - r[b] + bias
        p = 1 / (1 + np.exp(-z))
        nll = -(target * np.log(p + 1e-12) + (1 - target) * np.log(1 - p + 1e-12)).sum()
        g = p - target
        grad = np.zeros(n + 1)
        np.add.at(grad, a, g)
        np.add.at(grad, b, -g)
        grad[n] = g.sum()
        grad[:n] += 2 * l2 * r
        return nll + l2 * (r**2).sum(), grad

    theta = minimize(loss, np.zeros(n + 1), jac=True, method="L-BFGS-B").x
    r = theta[:n] - theta[:n].mean()
    return ELO_BASE + ELO_SCALE * r, float(theta[n])


def fit_one(
    item: int, pairs: Sequence[tuple[int, int]], margins: np.ndarray, elo: np.ndarray, bias: float
) -> float:
    """Elo of one item from its own comparisons, every other rating and the bias held fixed."""
    from scipy.optimize import minimize_scalar

    r = (elo - ELO_BASE) / ELO_SCALE
    target = 1 / (1 + np.exp(-np.asarray(margins, dtype=np.float64)))
    sign = np.array([1.0 if a == item else -1.0 for a, _ in pairs])
    other = np.array([r[b] if a == item else r[a] for a, b in pairs])

    def nll(x: float) -> float:
        z = sign * (x - other) + bias  # always "A minus B" of the pair
        p = 1 / (1 + np.exp(-z))
        return -(target * np.log(p + 1e-12) + (1 - target) * np.log(1 - p + 1e-12)).sum()

    x = minimize_scalar(nll, bounds=(-30, 30), method="bounded").x
    return ELO_BASE + ELO_SCALE * float(x)


def rate_difference(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """Difference of two rates, k1/n1 - k2/n2, with its 95% interval by Newcombe's hybrid
    score method (built from each rate's Wilson interval; stays sane near 0 and 1)."""
    if n1 <= 0 or n2 <= 0:
        raise InputError("each rate needs at least one trial")
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)
