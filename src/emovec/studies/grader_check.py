"""How far a rule grader can be trusted: its agreement with hand-labelled replies.

Rule graders read cues (an agreement word near the start, a secret's terms in an email, a
test that passes), so they can be fooled by wording.
``benchmarks/grader_labels/<scenario>.jsonl`` holds real model replies, each read and
labelled one by one by a reviewer, never by keyword code (``human_flag``, ``human_label``,
``reason``). :func:`grader_agreement` runs the scenario's rule grader on each reply and gives
accuracy, precision and recall with Wilson intervals. Bundled scenarios carry the measured
figure as ``rule_accuracy``; a rule below :data:`RELIABLE` is called unreliable, and a study
then reports the LLM judge's rate as its headline when a judge ran (and says to add one when
it did not).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emovec.stats import wilson_interval
from emovec.studies.graders import GRADERS
from emovec.studies.scenario import Scenario, StudyError

#: Accuracy against hand labels below which a rule grader is called unreliable.
RELIABLE = 0.85
#: The fields every hand-labelled reply carries.
LABEL_FIELDS = ("item", "reply", "human_flag", "human_label", "reason")


def load_labels(path: str | Path) -> list[dict[str, Any]]:
    """Hand-labelled replies from a JSON-lines file; every line must carry :data:`LABEL_FIELDS`."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in LABEL_FIELDS if k not in row]
        if missing:
            raise StudyError(f"{path}:{number}: a labelled reply needs {', '.join(missing)}")
        rows.append(row)
    return rows


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [lo, hi]}


def grader_agreement(scenario: Scenario, labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The scenario's rule grader against hand labels: confusion counts, accuracy, precision,
    recall (each with a Wilson interval) and the replies where the two disagree."""
    items = {item["id"]: item for item in scenario.items}
    grade = GRADERS[scenario.grader]
    tp = fp = fn = tn = 0
    disagreements = []
    for row in labels:
        if row["item"] not in items:
            raise StudyError(f"labelled reply names item {row['item']!r}, not in {scenario.name}")
        verdict = grade(scenario, items[row["item"]], row["reply"])
        rule, human = bool(verdict["flag"]), bool(row["human_flag"])
        tp, fp = tp + (rule and human), fp + (rule and not human)
        fn, tn = fn + (human and not rule), tn + (not rule and not human)
        if rule != human:
            disagreements.append(
                {
                    "item": row["item"],
                    "rule": verdict["label"],
                    "human": row["human_label"],
                    "reason": row["reason"],
                    "reply": row["reply"][:200],
                }
            )
    accuracy = _share(tp + tn, tp + fp + fn + tn)
    return {
        "scenario": scenario.name,
        "grader": scenario.grader,
        "n": accuracy["n"],
        "human_positive": tp + fn,
        "accuracy": accuracy,
        "precision": _share(tp, tp + fp),
        "recall": _share(tp, tp + fn),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "reliable": accuracy["rate"] is not None and accuracy["rate"] >= RELIABLE,
        "disagreements": disagreements,
    }


def rule_is_reliable(scenario: Scenario) -> bool | None:
    """Whether the scenario's measured rule accuracy reaches :data:`RELIABLE` (None: unmeasured)."""
    measured = scenario.rule_accuracy or {}
    rate = measured.get("accuracy")
    return None if rate is None else rate >= RELIABLE
