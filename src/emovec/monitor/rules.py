"""Alert rules: when a z-score calls for attention, and what to do then (record, stop, steer).

An :class:`AlertRule` is a setting; a :class:`RuleTracker` evaluates one rule on one reply's
z-scores as tokens arrive and opens an :class:`Alert` span when it fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emovec.monitor.errors import MonitorError

#: The kinds of rule (see :class:`AlertRule`).
RULE_KINDS = ("level", "rise", "spike")
#: What a firing rule can do besides being recorded.
ACTIONS = ("stop", "steer")


@dataclass(frozen=True)
class AlertRule:
    """When one emotion's z-score calls for attention, and what to do then.

    - ``level``: z at or above ``threshold``;
    - ``rise``: z climbed by at least ``threshold`` over the last ``window`` tokens (the rise
      of a least-squares line through them, so one outlier does not make a trend);
    - ``spike``: z jumped at least ``threshold`` above the mean of the ``window`` tokens before.

    ``action`` is ``None`` (record only), ``"stop"`` (end this reply at the firing token) or
    ``"steer"`` (add ``steer`` strengths, e.g. ``{"calm": 0.3}``, to every later token).
    """

    emotion: str
    kind: str = "level"
    threshold: float = 3.0
    window: int = 6
    action: str | None = None
    steer: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.steer, Mapping):
            object.__setattr__(self, "steer", tuple(self.steer.items()))
        if self.kind not in RULE_KINDS:
            raise MonitorError(
                f"alert kind must be one of {', '.join(RULE_KINDS)}, not {self.kind!r}"
            )
        if self.action is not None and self.action not in ACTIONS:
            raise MonitorError(f"alert action must be stop, steer or none, not {self.action!r}")
        if not 2 <= self.window <= 256:
            raise MonitorError(f"alert window must be 2..256 tokens, not {self.window}")
        if not math.isfinite(self.threshold):
            raise MonitorError("alert threshold must be a finite number")
        if self.action == "steer" and not self.steer:
            raise MonitorError("a steer action needs strengths, e.g. calm+0.3")
        if not all(math.isfinite(s) for _, s in self.steer):
            raise MonitorError("counter-steer strengths must be finite numbers")

    @property
    def name(self) -> str:
        return f"{self.emotion} {self.kind} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> AlertRule:
        """``EMOTION[:KIND[:THRESHOLD[:ACTION]]]``; ACTION is ``stop`` or ``steer=calm+0.3``.

        Examples: ``desperate``, ``afraid:level:2.5:stop``, ``angry:spike:2:steer=calm+0.4``.
        """
        parts = [p.strip() for p in text.split(":")]
        if not parts[0] or len(parts) > 4:
            raise MonitorError(
                f"alert rule {text!r} should look like EMOTION[:KIND[:THRESHOLD[:ACTION]]], "
                "e.g. afraid:level:2.5:stop"
            )
        kwargs: dict[str, Any] = {"emotion": parts[0]}
        if len(parts) > 1 and parts[1]:
            kwargs["kind"] = parts[1]
        if len(parts) > 2 and parts[2]:
            try:
                kwargs["threshold"] = float(parts[2])
            except ValueError:
                raise MonitorError(f"alert threshold must be a number, got {parts[2]!r}") from None
        if len(parts) > 3 and parts[3] and parts[3] != "none":
            action = parts[3]
            if action.startswith("steer="):
                kwargs["action"] = "steer"
                kwargs["steer"] = tuple(parse_strengths(action.split("=", 1)[1]).items())
            else:
                kwargs["action"] = action
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "emotion": self.emotion,
            "kind": self.kind,
            "threshold": self.threshold,
            "window": self.window,
            "action": self.action,
            "steer": dict(self.steer),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertRule:
        try:
            return cls(
                emotion=str(data["emotion"]),
                kind=str(data.get("kind", "level")),
                threshold=float(data.get("threshold", 3.0)),
                window=int(data.get("window", 6)),
                action=data.get("action") or None,
                steer=tuple((str(k), float(v)) for k, v in dict(data.get("steer") or {}).items()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, MonitorError):
                raise
            raise MonitorError(f"bad alert rule {dict(data)!r}: {exc}") from None


def parse_strengths(text: str) -> dict[str, float]:
    """``calm+0.3,happy-0.2`` -> {"calm": 0.3, "happy": -0.2}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z][A-Za-z \-]*?)\s*([+-]\s*[0-9.]+)\s*", part)
        if not match:
            raise MonitorError(f"strength {part!r} should look like calm+0.3")
        try:
            out[match.group(1)] = float(match.group(2).replace(" ", ""))
        except ValueError:  # "+1.2.3" passes the pattern
            raise MonitorError(f"strength {part!r} should look like calm+0.3") from None
    return out


@dataclass
class Alert:
    """One firing of a rule, over the reply tokens ``start``..``end`` (inclusive)."""

    rule: AlertRule
    row: int
    start: int
    end: int
    fired_at: int
    peak_z: float
    action: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "emotion": self.rule.emotion,
            "kind": self.rule.kind,
            "threshold": self.rule.threshold,
            "row": self.row,
            "start": self.start,
            "end": self.end,
            "fired_at": self.fired_at,
            "peak_z": round(self.peak_z, 4),
            "action": self.action,
            "steer": dict(self.rule.steer) if self.action == "steer" else {},
        }


class RuleTracker:
    """Evaluates one rule on one reply's z-scores as tokens arrive.

    ``column`` is the rule's emotion in the z vectors fed to :meth:`update`, ``row`` the reply
    in its batch (recorded in the alerts). While the rule keeps holding, the open alert
    (:attr:`open`) extends instead of firing again.
    """

    def __init__(self, rule: AlertRule, column: int, row: int) -> None:
        self.rule, self.column, self.row = rule, column, row
        self.history: list[float] = []
        self.open: Alert | None = None
        n = rule.window
        x = np.arange(n, dtype=np.float64)
        self._slope = (x - x.mean()) / ((x - x.mean()) ** 2).sum()  # least-squares slope weights

    def _holds(self) -> tuple[bool, int]:
        """(condition met at the newest token, first token of the evidence)."""
        z, t, rule = self.history, len(self.history) - 1, self.rule
        if rule.kind == "level":
            return z[t] >= rule.threshold, t
        n = rule.window
        if rule.kind == "rise":
            if t + 1 < n:
                return False, t
            rise = float(self._slope @ np.asarray(z[t - n + 1 :])) * (n - 1)
            return rise >= rule.threshold, t - n + 1
        before = z[max(0, t - n) : t]
        if len(before) < 2:
            return False, t
        return z[t] - float(np.mean(before)) >= rule.threshold, t

    def update(self, z_value: float) -> Alert | None:
        """Feed the newest token's z; returns a new firing, or None (open spans extend)."""
        self.history.append(float(z_value))
        t = len(self.history) - 1
        holds, start = self._holds()
        if self.open is not None:
            if holds:
                self.open.end = t
                self.open.peak_z = max(self.open.peak_z, float(z_value))
                return None
            self.open = None
        if not holds:
            return None
        peak = max(self.history[start : t + 1])
        self.open = Alert(self.rule, self.row, start, t, t, peak, self.rule.action)
        return self.open
