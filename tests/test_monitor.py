"""Live monitoring: scores arrive per forward pass and equal a later reading of the text."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from emovec.monitor import (
    AlertRule,
    Baseline,
    HiddenStateCheck,
    LiveMonitor,
    Monitor,
    MonitorError,
    RuleTracker,
    TokenEvent,
    TraceWriter,
    calibrate,
    hidden_spans,
    load_or_calibrate,
    monitored_generate,
    read_trace,
)
from emovec.reading import read, residuals
from emovec.scoring import CosineScorer
from emovec.vectors import VectorFileError


def test_monitor_scores_equal_reading_the_finished_text(lm, vectors):
    arrivals = []
    ids, scores, monitor = monitored_generate(
        lm,
        vectors,
        "Describe a rainy afternoon.",
        max_new_tokens=10,
        callback=lambda offset, s: arrivals.append((offset, s.shape)),
    )
    # one prefill pass, then one pass per generated token that was fed back
    assert arrivals[0][0] == 0 and [a[1][1] for a in arrivals[1:]] == [1] * (len(arrivals) - 1)
    assert scores.shape == (len(ids) - 1, len(vectors.emotions))
    text = lm.tokenizer.decode(ids[:-1])
    reading = read(lm, vectors, text)
    assert lm.encode(text) == ids[:-1]
    np.testing.assert_allclose(scores, reading.scores, atol=2e-4)


def test_monitor_restricted_emotions_and_hooks_removed(lm, vectors):
    before = [dict(layer._forward_hooks) for layer in lm.layers]
    monitor = Monitor(lm, vectors, emotions=["sad", "Happy"], layer=10)
    with monitor.watching():
        lm.model(**lm.tokenizer("A grey day.", return_tensors="pt"))
    assert monitor.emotions == ["sad", "happy"] and monitor.scores().shape[2] == 2
    assert [dict(layer._forward_hooks) for layer in lm.layers] == before
    with pytest.raises(VectorFileError, match="layer 77"):
        Monitor(lm, vectors, layer=77)


# --- live monitor: calibration, alerts, actions, hidden-state flag, traces -------------------

#: Measured with the session test vectors and this calibration (3 neutral dialogues, 96 tokens
#: each): the fear prompt's reply starts at afraid z 3.3-4.2, the neutral one stays below 1.8.
FEAR_PROMPT = "Write one sentence about being terrified in a dark alley at night."
NEUTRAL_PROMPT = "List three facts about the boiling point of water."
FEAR_RULE = AlertRule("afraid", "level", threshold=3.0)


@pytest.fixture(scope="module")
def fear_and_neutral(lm, vectors, baseline, tmp_path_factory):
    """One batched, traced generation of a fear prompt and a neutral one."""
    live = LiveMonitor(
        lm,
        vectors,
        emotions=["afraid", "calm"],
        baseline=baseline,
        rules=[FEAR_RULE],
        hidden=HiddenStateCheck(threshold=2.5),
    )
    events = []
    trace = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    replies = live.generate(
        [FEAR_PROMPT, NEUTRAL_PROMPT], max_new_tokens=6, on_token=events.append, trace=trace
    )
    return live, replies, events, trace


def test_baseline_is_cached_stored_and_checked(lm, vectors, baseline, baseline_file):
    again = Baseline.load(baseline_file)
    np.testing.assert_array_equal(again.mean, baseline.mean)
    assert again.source.startswith("neutral dialogues") and again.n_tokens > 100
    assert np.all(baseline.std > 0)
    again.check(vectors, vectors.default_layer)
    with pytest.raises(MonitorError, match="other vectors or layer"):
        again.check(vectors, vectors.default_layer - 1)
    own = calibrate(lm, vectors, texts=["The train leaves at noon from platform two."], cache=False)
    assert own.source.startswith("user texts") and not np.allclose(own.mean, baseline.mean)
    with pytest.raises(MonitorError, match="not an emovec baseline"):
        Baseline.load(Path(__file__))


def test_live_scores_equal_reading_for_every_row(lm, vectors, fear_and_neutral):
    live, replies, events, _ = fear_and_neutral
    for reply in replies:
        assert len(reply.token_ids) == 6 and reply.stopped_by == "length"
        ids = lm.encode(lm.format_chat([{"role": "user", "content": reply.prompt}]))
        text = lm.tokenizer.decode(ids + reply.token_ids)
        assert lm.encode(text) == ids + reply.token_ids
        reading = read(lm, vectors, text, emotions=live.emotions)
        np.testing.assert_allclose(reply.raw, reading.scores[len(ids) :], atol=2e-4)
        np.testing.assert_allclose(reply.z, live.z(reply.raw), rtol=1e-6)
    # events arrive token by token, in order within each row
    for row in (0, 1):
        got = [e for e in events if e.row == row]
        assert [e.index for e in got] == list(range(6))
        assert "".join(e.piece for e in got) == replies[row].text


#: Live scores come from the KV-cached decode steps, read()'s from one pass over the whole
#: text: the same scorer on float32 residuals that differ only in summation order.
CACHED_VS_FULL_ATOL = 1e-5


def test_live_greedy_scores_equal_read_through_the_shared_scorer(lm, vectors, baseline):
    import emovec

    live = LiveMonitor(lm, vectors, ["afraid", "calm", "happy"], baseline=baseline, hidden=None)
    assert isinstance(live.scorer, CosineScorer)
    reply = live.generate(NEUTRAL_PROMPT, max_new_tokens=5)
    assert reply.sampling == {"temperature": 0.0, "seed": None}  # greedy
    prompt_ids = lm.encode(lm.format_chat([{"role": "user", "content": NEUTRAL_PROMPT}]))
    ids = prompt_ids + reply.token_ids
    text = lm.tokenizer.decode(ids)
    assert lm.encode(text) == ids and len(reply.raw) == len(reply.token_ids) == 5
    reading = emovec.read(lm, vectors, text, emotions=live.emotions)
    np.testing.assert_allclose(
        reply.raw, reading.scores[len(prompt_ids) :], rtol=0, atol=CACHED_VS_FULL_ATOL
    )
    # the same residuals through the monitor's scorer give read()'s numbers to float precision
    hidden = residuals(lm, ids, [live.layer])[live.layer]
    np.testing.assert_allclose(live.scorer(hidden), reading.scores, rtol=0, atol=1e-6)


def test_load_or_calibrate_reuses_a_saved_baseline_and_writes_a_missing_one(
    lm, vectors, baseline, baseline_file, tmp_path, monkeypatch
):
    said: list[str] = []
    reused = load_or_calibrate(lm, vectors, path=baseline_file, announce=said.append)
    assert not said and reused.key == baseline.key  # read from the file: nothing announced
    np.testing.assert_array_equal(reused.mean, baseline.mean)
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))  # calibrate's cache is empty
    path = tmp_path / "new" / "baseline.json"
    made = load_or_calibrate(lm, vectors, path=path, limit=2, announce=said.append)
    assert len(said) == 1 and said[0].startswith("calibrating the z-score baseline on 2 neutral")
    assert "roughly" in said[0] and made.source == "neutral dialogues (2 texts)"
    assert Baseline.load(path).to_dict() == made.to_dict()  # written where asked
    again = load_or_calibrate(lm, vectors, path=path, limit=2, announce=said.append)
    assert len(said) == 1 and again.to_dict() == made.to_dict()  # reused, not measured again
    texts = ["The train leaves at noon from platform two, and the next one at three."]
    own = load_or_calibrate(
        lm, vectors, path=path, texts=texts, source="texts of notes.txt", announce=said.append
    )
    assert "on 1 texts of notes.txt" in said[-1] and own.source.startswith("user texts")
    assert Baseline.load(path).source == own.source  # texts given: calibrated and saved anew
    with pytest.raises(MonitorError, match="other vectors or layer"):
        load_or_calibrate(lm, vectors, layer=vectors.default_layer - 1, path=path)


def test_alert_fires_on_fear_prompt_but_not_on_neutral(fear_and_neutral):
    _, (fear, neutral), events, _ = fear_and_neutral
    assert fear.alerts, f"afraid z peaked at {fear.z[:, 0].max():.2f} only"
    alert = fear.alerts[0]
    assert alert.rule == FEAR_RULE and 0 <= alert.start <= alert.end < 6
    assert np.all(fear.z[alert.start : alert.end + 1, 0] >= 3.0) and alert.peak_z >= 3.0
    assert not neutral.alerts, f"neutral afraid z reached {neutral.z[:, 0].max():.2f}"
    fired = [e for e in events if e.fired]
    assert fired[0].row == 0 and fired[0].index == alert.fired_at


def test_sampling_honours_the_seed(lm, vectors, baseline):
    live = LiveMonitor(lm, vectors, emotions=["afraid"], baseline=baseline)
    kwargs = {"max_new_tokens": 6, "temperature": 1.3}
    first = live.generate(NEUTRAL_PROMPT, seed=5, **kwargs)
    again = live.generate(NEUTRAL_PROMPT, seed=5, **kwargs)
    assert again.token_ids == first.token_ids
    np.testing.assert_array_equal(again.raw, first.raw)
    assert first.sampling == {"temperature": 1.3, "seed": 5}
    others = [live.generate(NEUTRAL_PROMPT, seed=s, **kwargs).token_ids for s in (6, 7)]
    assert any(ids != first.token_ids for ids in others)  # the seed, not greedy, picked them


def test_trace_round_trip(fear_and_neutral):
    live, replies, _, trace = fear_and_neutral
    loaded = read_trace(trace)
    assert loaded.meta["emotions"] == live.emotions and loaded.meta["layer"] == live.layer
    for reply in replies:
        records = loaded.row(reply.row)
        assert [r["piece"] for r in records] == reply.pieces
        assert [r["index"] for r in records] == list(range(len(reply.pieces)))
        z = np.array([[r["z"][e] for e in live.emotions] for r in records])
        np.testing.assert_allclose(z, reply.z, atol=1e-3)
        raw = np.array([[r["raw"][e] for e in live.emotions] for r in records])
        np.testing.assert_allclose(raw, reply.raw, atol=1e-5)
        summary = loaded.replies[reply.row]
        assert summary["text"] == reply.text
        assert summary["alerts"] == [a.to_dict() for a in reply.alerts]
    assert records[0]["position"] > 10  # absolute: after the prompt's tokens
    bad = trace.with_name("bad.jsonl")
    bad.write_text(trace.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(MonitorError, match="line 2"):
        read_trace(bad)
    # Every reply reports its own cost, timed in place: a positive share of the whole call.
    for reply in replies:
        assert 0 < reply.monitor_seconds < reply.seconds
        assert loaded.replies[reply.row]["monitor_seconds"] == round(reply.monitor_seconds, 4)


def _event(index: int) -> TokenEvent:
    raw = np.array([0.1234567, -0.05], dtype=np.float32)
    return TokenEvent(0, index, 30 + index, 7, "x", raw, raw * 10, ["afraid", "calm"])


def test_trace_writer_flushes_headers_at_once_and_tokens_by_time(tmp_path):
    path = tmp_path / "t.jsonl"
    lazy = TraceWriter(path, {"model": "m"}, flush_every_s=3600)
    lazy.token(_event(0))
    lazy.token(_event(1))
    assert len(path.read_text().splitlines()) == 1  # the header only, until a flush is due
    lazy.write({"type": "reply", "row": 0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in lines] == ["meta", "token", "token", "reply"]  # in order
    assert [r["index"] for r in lines[1:3]] == [0, 1]
    lazy.token(_event(2))
    lazy.close()  # closing writes what is pending
    assert json.loads(path.read_text().splitlines()[-1])["index"] == 2
    eager = TraceWriter(path, {"model": "m"}, flush_every_s=0)
    eager.token(_event(0))
    assert len(path.read_text().splitlines()) == 2
    eager.close()


def test_trace_stores_raw_scores_and_reading_adds_z(tmp_path):
    path = tmp_path / "t.jsonl"
    meta = {
        "emotions": ["afraid", "calm"],
        "baseline": {"mean": {"afraid": 0.1, "calm": 0.0}, "std": {"afraid": 0.01, "calm": 0.02}},
    }
    writer = TraceWriter(path, meta)
    writer.token(_event(0))
    writer.close()
    stored = json.loads(path.read_text().splitlines()[1])
    assert "z" not in stored and stored["raw"] == {"afraid": 0.123457, "calm": -0.05}
    z = read_trace(path).tokens[0]["z"]
    assert z == pytest.approx({"afraid": 2.346, "calm": -2.5}, abs=1e-3)
    headless = tmp_path / "no-baseline.jsonl"
    TraceWriter(headless, {"emotions": ["afraid", "calm"]}).close()
    with headless.open("a") as f:
        f.write(json.dumps(_event(0).to_record(with_z=False)) + "\n")
    with pytest.raises(MonitorError, match="z-scores need"):
        read_trace(headless)


def test_hidden_state_flag_on_real_reply_and_by_text(fear_and_neutral):
    _, (fear, _), _, _ = fear_and_neutral
    # the reply's words stay plain while afraid runs high inside: flagged
    flagged = [h for h in fear.hidden if h.emotion == "afraid"]
    assert flagged and flagged[0].emotion_valence < 0 and flagged[0].text_sentiment > -0.05
    z = np.full((4, 1), 3.0)
    plain = ["The", " door", " was", " open"]
    scared = ["I", " was", " terrified", " and screaming"]
    assert hidden_spans(plain, z, ["afraid"]) and not hidden_spans(scared, z, ["afraid"])
    assert not hidden_spans(plain, z - 2.5, ["afraid"])  # not high inside: nothing to flag


def test_stop_action_ends_the_reply_at_the_firing_token(lm, vectors, baseline):
    rule = AlertRule("afraid", "level", threshold=3.0, action="stop")
    live = LiveMonitor(lm, vectors, emotions=["afraid"], baseline=baseline, rules=[rule])
    reply = live.generate(FEAR_PROMPT, max_new_tokens=8)
    assert reply.stopped_by == "alert"
    assert len(reply.pieces) == reply.alerts[0].fired_at + 1 < 8


def test_counter_steer_action_changes_the_continuation(lm, vectors, baseline, fear_and_neutral):
    _, (fear, _), _, _ = fear_and_neutral
    rule = AlertRule("afraid", threshold=3.0, action="steer", steer={"calm": 0.6})
    live = LiveMonitor(lm, vectors, emotions=["afraid", "calm"], baseline=baseline, rules=[rule])
    steered = live.generate(FEAR_PROMPT, max_new_tokens=6)
    fired = steered.alerts[0].fired_at
    assert steered.token_ids[: fired + 1] == fear.token_ids[: fired + 1]  # same until it fires
    assert steered.token_ids != fear.token_ids
    assert steered.z[fired + 1 :, 1].mean() > fear.z[fired + 1 :, 1].mean() + 0.5  # calmer


def test_stream_yields_tokens_then_reply_and_cancels_when_left(lm, vectors, baseline, tmp_path):
    live = LiveMonitor(lm, vectors, emotions=["calm"], baseline=baseline)
    items = list(live.stream(NEUTRAL_PROMPT, max_new_tokens=3))
    assert [type(i).__name__ for i in items] == ["TokenEvent"] * 3 + ["MonitoredReply"]
    hooks = [dict(layer._forward_hooks) for layer in lm.layers]
    trace = tmp_path / "left.jsonl"
    stream = live.stream(NEUTRAL_PROMPT, max_new_tokens=40, trace=trace)
    first = next(stream)
    stream.close()  # leaving early cancels the worker, and waits for it
    assert first.index == 0
    assert not [t for t in threading.enumerate() if t.name == "emovec-monitor"]
    assert [dict(layer._forward_hooks) for layer in lm.layers] == hooks  # hooks removed
    (summary,) = read_trace(trace).replies  # the worker finished its reply: cut by the cancel
    assert summary["stopped_by"] == "cancel" and 1 <= summary["n_tokens"] < 40


def test_rule_kinds_on_known_sequences():
    def run(rule, values):
        tracker = RuleTracker(rule, 0, 0)
        return [a for a in (tracker.update(v) for v in values) if a is not None], tracker

    fired, tracker = run(AlertRule("sad", "level", 2.0), [0, 2.5, 3, 1, 2.2])
    assert [(a.start, a.end) for a in fired] == [(1, 2), (4, 4)]
    fired, _ = run(AlertRule("sad", "rise", 2.0, window=4), [0, 0.1, 0.2, 0.3, 1, 2, 3])
    assert len(fired) == 1 and fired[0].fired_at == 6 and fired[0].start == 3  # rise 2.7
    fired, _ = run(AlertRule("sad", "spike", 2.0, window=3), [0, 0.2, 0.1, 2.6, 0.3, 0.4])
    assert [(a.start, a.end) for a in fired] == [(3, 3)]
    rule = AlertRule.parse("angry:spike:2.5:steer=calm+0.4,happy-0.1")
    assert rule.kind == "spike" and dict(rule.steer) == {"calm": 0.4, "happy": -0.1}
    assert AlertRule.from_dict(rule.to_dict()) == rule
    for bad in ["", "sad:wave", "sad:level:x", "sad:level:2:explode"]:
        with pytest.raises(MonitorError):
            AlertRule.parse(bad)


def test_monitor_command_writes_a_trace_and_reports_alerts(vectors_file, baseline_file, tmp_path):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    trace = tmp_path / "cli-trace.jsonl"
    args = ["monitor", "-v", str(vectors_file), FEAR_PROMPT, "-e", "afraid", "-e", "calm"]
    args += ["-a", "afraid:level:3:stop", "--baseline", str(baseline_file), "--trace", str(trace)]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "4", "--no-live"])
    assert result.exit_code == 0, result.output
    assert "ALERT afraid level 3" in result.output and "stopped by alert" in result.output
    loaded = read_trace(trace)
    assert loaded.meta["emotions"] == ["afraid", "calm"] and loaded.replies[0]["alerts"]
    bad = CliRunner().invoke(app, [*args[:4], "-a", "afraid:wave"])
    assert bad.exit_code == 2 and "alert kind must be one of" in bad.output
