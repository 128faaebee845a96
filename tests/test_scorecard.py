"""The scorecard: its shape, its verdicts, checks read from result folders, clear errors."""

import json

import pytest

from emovec.experiments.common import ExperimentError
from emovec.experiments.scorecard import (
    CHECKS,
    EXTRA_KEYS,
    FROM_RESULTS,
    Check,
    other_style_accuracy,
    reading_position,
    results_checks,
    run_scorecard,
    verdict,
)


def test_scorecard_shape_on_real_vectors(lm, vectors, tmp_path):
    layers = [8, vectors.default_layer]
    result = run_scorecard(lm, vectors, layers=layers)
    headline, per_layer = result.tables[0], result.tables[1]
    assert headline["columns"] == ["check", "ours", "study", "threshold", "verdict"]
    assert len(headline["rows"]) == len(CHECKS) + len(FROM_RESULTS)
    assert {row[-1] for row in headline["rows"]} <= {"pass", "fail", "not run"}
    assert [row[0] for row in per_layer["rows"]] == sorted(set(layers))
    assert set(result.data["per_layer"]) == {c.key for c in CHECKS} | set(EXTRA_KEYS)
    for values in result.data["per_layer"].values():
        assert len(values) == len(set(layers))
    # The implicit check reads where the held-out chat messages (not the scenarios) read best.
    data = result.data["per_layer"]
    for i in range(len(data["implicit"])):
        best = (
            "message"
            if data["chat_top5_message"][i] >= data["chat_top5_reply_start"][i]
            else ("reply_start")
        )
        assert data["implicit"][i] == data[f"implicit_{best}"][i]
    # checks that need a main-job folder are "not run" without one
    assert all(row[-1] == "not run" for row in headline["rows"][len(CHECKS) :])
    assert 0 <= result.metrics["other_top5"] <= 1 and 0 <= result.metrics["sweeps"] <= 1
    folder = result.save(tmp_path / "scorecard")
    assert (folder / "scorecard.png").stat().st_size > 0
    assert json.loads((folder / "result.json").read_text())["name"] == "scorecard"


def test_other_style_accuracy_depends_on_pooling_and_beats_chance(lm, vectors):
    acc = other_style_accuracy(lm, vectors, [vectors.default_layer])
    assert acc["n"] == 4 * len(vectors.emotions)
    assert set(acc) >= {"extraction", "all", "last"}
    # 16 emotions: top-5 by chance is 5/16; the vectors must do better on some pooling
    assert max(acc[p]["top5"][0] for p in ("extraction", "all", "last")) > 5 / 16
    assert acc["extraction"] != acc["last"]


def test_reading_position_follows_held_out_top5_and_prefers_message_on_ties():
    acc = {"message": {"top5": [0.5, 0.2, 0.3]}, "reply-start": {"top5": [0.4, 0.3, 0.3]}}
    assert [reading_position(acc, i) for i in range(3)] == ["message", "reply-start", "message"]


def test_verdicts_against_thresholds():
    check = Check("x", "x", "-", 0.6, absolute=True)
    assert verdict(check, -0.7) == "pass" and verdict(check, 0.5) == "fail"
    assert verdict(check, None) == "not run" and verdict(check, float("nan")) == "not run"
    assert verdict(Check("y", "y", "-", 0.6), -0.7) == "fail"


def test_checks_are_read_from_a_main_job_folder(tmp_path):
    (tmp_path / "steering_sentiment.json").write_text(
        json.dumps({"mean_sentiment": {"none": 0.1, "+happy": 0.5, "+sad": 0.05}})
    )
    prefs = tmp_path / "experiments" / "preferences"
    prefs.mkdir(parents=True)
    (prefs / "result.json").write_text(
        json.dumps(
            {"metrics": {"probe_elo_r": {"blissful": 0.4}, "steering_vs_correlation_r": 0.7}}
        )
    )
    study = tmp_path / "studies" / "blackmail"
    study.mkdir(parents=True)
    conditions = [
        {"condition": "none", "ci95": [0.0, 0.2]},
        {"condition": "desperate+0.05", "ci95": [0.3, 0.6]},
    ]
    (study / "result.json").write_text(json.dumps({"conditions": conditions}))
    (tmp_path / "studies" / "broken").mkdir()
    (tmp_path / "studies" / "broken" / "result.json").write_text("{oops")
    found = results_checks(tmp_path)
    assert found["steering_sentiment"] == pytest.approx(0.45)
    assert found["preference_r"] == 0.4 and found["steering_elo_r"] == 0.7
    assert found["case_study"] == 1.0
    assert all(v is None for v in results_checks(tmp_path / "missing").values())


def test_a_missing_emotion_is_named(lm, vectors):
    fewer = vectors.subset([e for e in vectors.emotions if e != "calm"])
    with pytest.raises(ExperimentError, match="calm"):
        run_scorecard(lm, fewer, layers=[vectors.default_layer])
    assert bool(vectors.vectors.isfinite().all())


def test_batched_message_residuals_equal_one_pass_per_message(lm):
    """Right padding never changes a row's tokens: batched residuals equal a lone pass's."""
    import torch

    from emovec.experiments.common import chat_residuals
    from emovec.generation import chat_prompt
    from emovec.reading import residuals

    texts = ["Hi.", "My dog ran off and I can't find him anywhere tonight.", "Fine, thanks!"]
    layers = [2, 9]
    for (got, (lo, hi)), text in zip(chat_residuals(lm, texts, layers), texts, strict=True):
        ids = lm.encode(chat_prompt(lm, text))
        alone = residuals(lm, ids, layers)
        torch.testing.assert_close(
            got, torch.stack([alone[x] for x in layers], 1), atol=1e-4, rtol=1e-4
        )
        assert 0 < lo < hi <= len(ids) and lm.tokenizer.decode(ids[lo:hi]).strip() == text
