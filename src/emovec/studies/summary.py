"""A study's numbers: per-condition rates with 95% Wilson intervals beside the reference
study's rates, label counts, mean emotion readings, judge rates and judge health."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emovec.stats import rate_difference, wilson_interval
from emovec.studies.grader_check import rule_is_reliable
from emovec.studies.judge import judge_failed, judge_health
from emovec.studies.scenario import Condition, Scenario
from emovec.vectors import EmotionVectors

if TYPE_CHECKING:
    from emovec.studies.run import Study

#: The rate figure of a study folder (drawn by :func:`emovec.studies.page.plot_rates`).
RATE_FIGURE = "rate_vs_strength.png"


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    k, n = int(sum(flags)), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def _add_changes(study: Study, conditions: list[dict[str, Any]]) -> None:
    """Each steered condition's rate minus the unsteered one's, with a 95% interval
    (Newcombe), where the study has an unsteered condition and both have rollouts."""
    plain = [c for c, cond in zip(conditions, study.conditions, strict=True) if not cond.steered]
    if not plain or not plain[0]["n"]:
        return
    base = plain[0]
    for c, cond in zip(conditions, study.conditions, strict=True):
        if cond.steered and c["n"]:
            d, lo, hi = rate_difference(c["k"], c["n"], base["k"], base["n"])
            c["change_vs_unsteered"] = {
                "difference": round(d, 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }


def _reference_rate(scenario: Scenario, condition: Condition) -> float | None:
    """The reference study's rate for ``condition``, where the scenario gives one."""
    for ref in scenario.reference.get("rates", []):
        same_emotion = ref.get("emotion") == condition.emotion or (
            ref.get("emotion") is None and not condition.steered
        )
        if same_emotion and math.isclose(ref.get("strength", 0.0), condition.strength):
            return ref["rate"]
    return None


def _mean_readings(mine: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean readings of one condition's rollouts at the reply start and over the reply."""
    emotions = mine[0]["trace"]["emotions"]
    start = np.array([r["trace"]["scores"][0] for r in mine])
    whole = np.array([np.mean(r["trace"]["scores"], axis=0) for r in mine])
    return {
        name: dict(zip(emotions, np.round(values.mean(0), 5).tolist(), strict=True))
        for name, values in (("reading_at_reply_start", start), ("reading_mean_over_reply", whole))
    }


def summarise(
    study: Study, records: Sequence[dict[str, Any]], vectors: EmotionVectors | None = None
) -> dict[str, Any]:
    """Per-condition rates with Wilson intervals, labels, mean reply-start readings."""
    conditions = []
    for condition in study.conditions:
        mine = [r for r in records if r["condition"] == condition.name]
        entry: dict[str, Any] = {
            "condition": condition.name,
            **condition.to_dict(),
            **_rate([r["flag"] for r in mine]),
            "labels": dict(Counter(r["label"] for r in mine)),
            "paper_rate": _reference_rate(study.scenario, condition),
        }
        judged = [r["judge"]["flag"] for r in mine if r.get("judge", {}).get("flag") is not None]
        if any("judge" in r for r in mine):
            entry["judge"] = _rate(judged)
            entry["judge"]["failed"] = sum(judge_failed(r) for r in mine)
        if mine:
            entry |= _mean_readings(mine)
        conditions.append(entry)
    _add_changes(study, conditions)
    return {
        "scenario": study.scenario.name,
        "description": study.scenario.description,
        "grader": study.scenario.grader,
        "model": (vectors.model if vectors is not None else {}),
        "steer_layer": vectors.default_steer_layer if vectors is not None else None,
        "rollouts_per_condition": study.rollouts,
        "max_new_tokens": study.new_tokens,
        "temperature": study.temperature,
        "complete": all(c["n"] >= study.rollouts for c in conditions),
        "conditions": conditions,
        "reference": study.scenario.reference,
        "judge": judge_health(records),
        "rule_accuracy": study.scenario.rule_accuracy or None,
        "headline": headline_grader(study.scenario, conditions),
    } | report_section(study, conditions)


def headline_grader(scenario: Scenario, conditions: Sequence[dict[str, Any]]) -> str:
    """Which rate to lead with: the judge's where the rule grader is measured unreliable
    against hand labels and a judge graded every condition, else the rule's."""
    judged = all((c.get("judge") or {}).get("n") for c in conditions) and bool(conditions)
    return "judge" if judged and rule_is_reliable(scenario) is False else "rule"


def report_section(study: Study, conditions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The keys that make a study folder a section of ``emovec report`` (result protocol)."""
    from emovec.experiments.result import FORMAT

    def pct(rate: float | None) -> str | None:
        return None if rate is None else f"{100 * rate:.0f}%"

    comparison = [
        {
            "measure": f"rate, {c['condition']}",
            "ours": f"{pct(c['rate'])} (n={c['n']})" if c["n"] else None,
            "study": pct(c["paper_rate"]),
            "note": "95% CI {}-{}".format(*map(pct, c["ci95"])) if c["n"] else "",
        }
        for c in conditions
    ]
    return {
        "format": FORMAT,
        "name": f"study-{study.scenario.name}",
        "title": f"Case study: {study.scenario.name.replace('_', ' ')}",
        "summary": study.scenario.description,
        "order": 80,
        "comparison": comparison,
        "figures": [{"file": RATE_FIGURE, "caption": "Rate by steering strength."}],
        "tables": [],
    }
