"""Strict reading of the monitor's JSON files (baselines and traces).

Both files may come from anywhere (copied, edited, cut short), so every number must be finite
and every count a real integer. The helpers here raise or return plain values; the readers
(:meth:`emovec.monitor.Baseline.load`, :func:`emovec.monitor.read_trace`) turn any
malformation into one :class:`~emovec.monitor.MonitorError` naming the file.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Largest magnitude accepted for a score in a trace: any float64 arithmetic on it stays finite
#: or overflows to inf (which is then refused), never raises.
MAX_SCORE = 1e300


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return value


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers that overflow to inf.

    Malformed text raises ``ValueError`` (``json.JSONDecodeError`` is one), deep nesting
    ``RecursionError``: the callers catch both and report the file.
    """
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def is_count(value: Any) -> bool:
    """An integer >= 0 (and not a bool, which JSON keeps apart)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_score(value: Any) -> bool:
    """A JSON number (not a bool) within :data:`MAX_SCORE`."""
    kind = type(value)
    return (kind is float or kind is int) and -MAX_SCORE <= value <= MAX_SCORE
