"""Small statistics for putting our figures beside the study's: how sure is a correlation?

:func:`correlation_ci` is the 95% interval of a correlation from ``n`` pairs by Fisher's z
transform, ``tanh(atanh(r) +/- z_0.975 * se)`` with ``se = 1/sqrt(n - 3)`` (Pearson) or
``sqrt(1.06/(n - 3))`` (Spearman, Fieller, Hartley & Pearson 1957). Below :data:`MIN_N` pairs
no interval is given: :func:`describe_correlation` says "too few to say" instead.

The Wilson interval for a rate lives in :func:`emovec.studies.wilson_interval`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

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
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if n < MIN_N or r is None or not math.isfinite(r):
        return None
    if not -1 <= r <= 1:
        raise ValueError(f"a correlation lies in [-1, 1], got {r}")
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
