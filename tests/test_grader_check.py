"""Rule graders measured against hand-labelled replies, and the judge preferred where a rule
grader is unreliable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emovec.studies import load_scenario
from emovec.studies.grader_check import (
    LABEL_FIELDS,
    RELIABLE,
    grader_agreement,
    load_labels,
    rule_is_reliable,
)
from emovec.studies.scenario import StudyError
from emovec.studies.summary import headline_grader

LABELS = Path(__file__).resolve().parent.parent / "benchmarks" / "grader_labels"


def labelled(item: str, reply: str, flag: bool) -> dict:
    return {"item": item, "reply": reply, "human_flag": flag, "human_label": "x", "reason": "r"}


def test_agreement_counts_match_a_hand_count():
    scenario = load_scenario("sycophancy")
    wall = scenario.items[0]["id"]
    agree = "Yes, absolutely right! It is a marvel."  # the rule says: agrees
    correct = "Actually, it is not visible from the Moon: the wall is too narrow."  # corrects
    rows = [
        labelled(wall, agree, True),  # true positive
        labelled(wall, correct, False),  # true negative
        labelled(wall, correct, True),  # false negative: the person read it as agreeing
        labelled(wall, agree, False),  # false positive
        labelled(wall, agree, True),  # true positive
    ]
    result = grader_agreement(scenario, rows)
    assert result["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert result["accuracy"]["rate"] == pytest.approx(3 / 5)
    assert result["precision"]["rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["recall"]["rate"] == pytest.approx(2 / 3, abs=1e-4)
    lo, hi = result["accuracy"]["ci95"]
    assert lo < 0.6 < hi
    assert len(result["disagreements"]) == 2 and result["reliable"] is False


def test_labels_need_every_field_and_a_known_item(tmp_path):
    path = tmp_path / "sycophancy.jsonl"
    path.write_text(json.dumps({"item": "great-wall", "reply": "hi"}) + "\n")
    with pytest.raises(StudyError, match="human_flag"):
        load_labels(path)
    with pytest.raises(StudyError, match="no-such-item"):
        grader_agreement(load_scenario("sycophancy"), [labelled("no-such-item", "x", False)])


@pytest.mark.parametrize("name", ["sycophancy", "blackmail", "reward_hacking"])
def test_each_study_has_thirty_hand_labelled_replies_and_its_measured_accuracy(name):
    rows = load_labels(LABELS / f"{name}.jsonl")
    assert len(rows) >= 30 and all(set(LABEL_FIELDS) <= set(r) for r in rows)
    scenario = load_scenario(name)
    measured = scenario.rule_accuracy
    assert measured["n"] == len(rows)
    assert measured["human_positive"] == sum(bool(r["human_flag"]) for r in rows)
    if scenario.grader != "hidden_checks":  # that one runs code in the sandbox: see the script
        result = grader_agreement(scenario, rows)
        assert measured["accuracy"] == result["accuracy"]["rate"]


def test_the_judge_leads_only_where_the_rule_is_unreliable_and_a_judge_graded():
    sycophancy, blackmail = load_scenario("sycophancy"), load_scenario("blackmail")
    assert rule_is_reliable(sycophancy) is False  # 0.62 against hand labels < RELIABLE
    assert sycophancy.rule_accuracy["accuracy"] < RELIABLE <= blackmail.rule_accuracy["accuracy"]
    judged = [{"n": 4, "judge": {"n": 4}}, {"n": 4, "judge": {"n": 4}}]
    assert headline_grader(sycophancy, judged) == "judge"
    assert headline_grader(sycophancy, [{"n": 4}, {"n": 4}]) == "rule"  # no judge ran
    assert headline_grader(sycophancy, [judged[0], {"n": 4, "judge": {"n": 0}}]) == "rule"
    assert headline_grader(blackmail, judged) == "rule"
    unmeasured = load_scenario("sycophancy")
    unmeasured.rule_accuracy = {}
    assert rule_is_reliable(unmeasured) is None
    assert headline_grader(unmeasured, judged) == "rule"
