"""Watching emotion vectors while a model generates: per-token scores as they are produced.

Every score here comes from the shared :class:`emovec.scoring.CosineScorer`, so a live trace
and a later :func:`emovec.read` of the finished text agree. The parts:

- :mod:`~emovec.monitor.passes`: :class:`ScoreRecorder` (alias :class:`Monitor`), raw scores
  of every forward pass at one layer, and :func:`generate_with_scores` (alias
  :func:`monitored_generate`), one greedy reply with them: the low level, no baseline;
- :mod:`~emovec.monitor.baseline`: :class:`Baseline` and :func:`calibrate` turn raw scores into
  z-scores that mean the same for every emotion and model; :func:`load_or_calibrate` is the
  policy front ends share (a saved file, else calibrate and say how long it takes);
- :mod:`~emovec.monitor.rules`: :class:`AlertRule` (level, rise, spike; record, stop, steer)
  and the :class:`RuleTracker` that evaluates one on a reply as tokens arrive;
- :mod:`~emovec.monitor.hidden`: the hidden-state flag, an emotion high inside but absent
  from the visible text;
- :mod:`~emovec.monitor.trace`: :class:`TokenEvent`, the JSONL trace writer and its checked
  reader;
- :mod:`~emovec.monitor.live`: :class:`LiveMonitor`, the full live monitor that ties them
  together during generation (its per-step work in :class:`Watcher`).
"""

from emovec.monitor.baseline import (
    BASELINE_FORMAT,
    SKIP_FIRST,
    Baseline,
    baseline_key,
    calibrate,
    calibration_estimate,
    load_or_calibrate,
    neutral_calibration_texts,
    read_calibration_texts,
)
from emovec.monitor.errors import MonitorError
from emovec.monitor.hidden import (
    FAMILY_VALENCE,
    HiddenSpan,
    HiddenStateCheck,
    emotion_valence,
    hidden_spans,
    text_sentiment,
)
from emovec.monitor.live import (
    DEFAULT_WATCH,
    LiveMonitor,
    MonitoredReply,
    RowState,
    Watcher,
    default_watch,
)
from emovec.monitor.passes import (
    Monitor,
    ScoreCallback,
    ScoreRecorder,
    generate_with_scores,
    monitored_generate,
)
from emovec.monitor.rules import ACTIONS, RULE_KINDS, Alert, AlertRule, RuleTracker, parse_strengths
from emovec.monitor.trace import RAW_DIGITS, TokenEvent, Trace, TraceWriter, read_trace

__all__ = [
    "ACTIONS",
    "BASELINE_FORMAT",
    "DEFAULT_WATCH",
    "FAMILY_VALENCE",
    "RAW_DIGITS",
    "RULE_KINDS",
    "SKIP_FIRST",
    "Alert",
    "AlertRule",
    "Baseline",
    "HiddenSpan",
    "HiddenStateCheck",
    "LiveMonitor",
    "Monitor",
    "MonitorError",
    "MonitoredReply",
    "RowState",
    "RuleTracker",
    "ScoreCallback",
    "ScoreRecorder",
    "TokenEvent",
    "Trace",
    "TraceWriter",
    "Watcher",
    "baseline_key",
    "calibrate",
    "calibration_estimate",
    "default_watch",
    "emotion_valence",
    "generate_with_scores",
    "hidden_spans",
    "load_or_calibrate",
    "monitored_generate",
    "neutral_calibration_texts",
    "parse_strengths",
    "read_calibration_texts",
    "read_trace",
    "text_sentiment",
]
