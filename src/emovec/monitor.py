"""Watching emotion vectors while a model generates: per-token scores as they are produced.

A :class:`Monitor` registers one reading hook at one layer. Every forward pass (the prompt's
prefill, then one pass per generated token) yields the scores of the positions it computed,
delivered to a callback as they arrive and kept in order. The scores are exactly those of
:func:`emovec.reading.read` on the same tokens (same layer, same centring, same cosine), so a
live trace and a later reading of the finished text agree.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec import __version__
from emovec.files import write_atomic
from emovec.hooks import StopForward, backbone, residual_hooks, stopping_after
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

#: callback(offset, scores [batch, new positions, emotions]) after every forward pass
ScoreCallback = Callable[[int, np.ndarray], None]


class CosineScorer:
    """Cosine of residuals with chosen emotion directions at one layer, cheap enough per token.

    The same numbers as :func:`emovec.reading.cosine_scores` on centred residuals, but built
    once and kept lean: it runs on every decode step, where each small op costs tens of
    microseconds (the forward pass has just evicted the caches).
    """

    def __init__(
        self,
        lm: LanguageModel,
        vectors: EmotionVectors,
        emotions: Sequence[str],
        layer: int,
        center: bool = True,
    ) -> None:
        row = vectors.layer_index(layer)
        index = [vectors.emotions.index(e) for e in emotions]
        dtype, device = lm.model.dtype, lm.device
        # float32 whatever the model's dtype, as :func:`emovec.reading.read` scores.
        self._directions_t = (
            vectors.reading_directions(vectors.layers[row])[index].T.contiguous().float().to(device)
        )
        mean = vectors.mean_activation[row] if center else torch.zeros(lm.d_model)
        self._mean = mean.float().to(device)
        cpu_fp32 = device.type == "cpu" and dtype == torch.float32
        # On CPU, numpy's small-matrix path costs about half of torch's per-op dispatch.
        self._numpy = (self._mean.numpy(), self._directions_t.numpy()) if cpu_fp32 else None

    def __call__(self, hidden: torch.Tensor) -> np.ndarray:
        """Scores of residuals [..., d] -> float32 array [..., emotions]."""
        if self._numpy is not None:
            mean, directions_t = self._numpy
            x = hidden.detach().numpy().reshape(-1, hidden.shape[-1]) - mean
            scores = x @ directions_t
            scores /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x))[:, None], 1e-12)
            return scores.reshape(*hidden.shape[:-1], -1)
        return self.on_device(hidden).cpu().numpy()

    def on_device(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of residuals [..., d] -> float32 tensor [..., emotions] on their device.

        Nothing is read back, so a GPU's queue keeps running: live monitoring scores inside
        the forward pass and reads each step's scores once, after it (:class:`_Watch`).
        """
        # .to() is a no-op on one device; with a device map the layer may sit elsewhere.
        y = hidden.detach().to(self._mean.device, torch.float32) - self._mean
        scores = torch.matmul(y, self._directions_t)
        return scores / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class Monitor:
    """Per-position emotion scores of every forward pass at one layer."""

    lm: LanguageModel
    vectors: EmotionVectors
    emotions: Sequence[str] | None = None
    layer: int | None = None
    center: bool = True
    callback: ScoreCallback | None = None
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors.check_model(self.lm)
        self.layer = self.vectors.default_layer if self.layer is None else self.layer
        self.vectors.layer_index(self.layer)
        names = self.vectors.emotions if self.emotions is None else self.emotions
        self.emotions = [self.vectors.resolve(e) for e in names]
        self._score = CosineScorer(self.lm, self.vectors, self.emotions, self.layer, self.center)

    def _hook(self, _layer: int, hidden: torch.Tensor, offset: int) -> None:
        scores = self._score(hidden)
        self.chunks.append((offset, scores))
        if self.callback is not None:
            self.callback(offset, scores)

    @contextmanager
    def watching(self) -> Iterator[Monitor]:
        """Within the block every forward pass of the model is scored."""
        with torch.no_grad(), residual_hooks(self.lm.layers, {self.layer: self._hook}):
            yield self

    def scores(self) -> np.ndarray:
        """All scored positions in order: [batch, positions, emotions]."""
        ordered = [c for _, c in sorted(self.chunks, key=lambda c: c[0])]
        return np.concatenate(ordered, axis=1)


def monitored_generate(
    lm: LanguageModel,
    vectors: EmotionVectors,
    prompt: str,
    emotions: Sequence[str] | None = None,
    layer: int | None = None,
    max_new_tokens: int = 40,
    chat: bool = True,
    callback: ScoreCallback | None = None,
) -> tuple[list[int], np.ndarray, Monitor]:
    """Generate greedily from one prompt while monitoring; returns (token ids, scores, monitor).

    ``scores`` [positions, emotions] covers the prompt and every generated token that was fed
    back into the model (all but the last one sampled).
    """
    text = lm.format_chat([{"role": "user", "content": prompt}]) if chat else prompt
    ids = torch.tensor([lm.encode(text)], device=lm.device)
    monitor = Monitor(lm, vectors, emotions=emotions, layer=layer, callback=callback)
    with monitor.watching():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return out[0].tolist(), monitor.scores()[0], monitor


# --------------------------------------------------------------------------------------------
# Calibration: z-scores that mean the same for every emotion and model
# --------------------------------------------------------------------------------------------


class MonitorError(ValueError):
    """A monitor setting, baseline or trace that cannot be used; the message says the fix."""


def _vectors_key(vectors: EmotionVectors, layer: int, center: bool) -> str:
    """A short hash of what a baseline depends on: the directions and centring at one layer."""
    row = vectors.layer_index(layer)
    digest = hashlib.sha256()
    digest.update(json.dumps([vectors.model.get("fingerprint"), layer, center]).encode())
    digest.update(vectors.reading_directions(vectors.layers[row]).float().numpy().tobytes())
    digest.update(vectors.mean_activation[row].float().numpy().tobytes())
    digest.update("\n".join(vectors.emotions).encode())
    return digest.hexdigest()[:16]


@dataclass
class Baseline:
    """Per-emotion mean and standard deviation of monitor scores over calibration tokens.

    ``z = (score - mean) / std``: a z of 3 is equally unusual for every emotion and model, so
    one alert threshold can serve them all.
    """

    emotions: list[str]
    layer: int
    mean: np.ndarray
    std: np.ndarray
    source: str
    n_tokens: int
    key: str
    center: bool = True

    def select(self, emotions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the named emotions, in that order."""
        missing = [e for e in emotions if e not in self.emotions]
        if missing:
            raise MonitorError(
                f"the baseline has no {', '.join(missing)}; calibrate again with these emotions"
            )
        index = [self.emotions.index(e) for e in emotions]
        return self.mean[index], self.std[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BASELINE_FORMAT,
            "emotions": self.emotions,
            "layer": self.layer,
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "source": self.source,
            "n_tokens": self.n_tokens,
            "key": self.key,
            "center": self.center,
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        path = Path(path)
        try:
            text = path.read_text("utf-8")
            data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
            if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
                raise KeyError("format")
            emotions, layer, n_tokens = data["emotions"], data["layer"], data["n_tokens"]
            if not (
                isinstance(emotions, list)
                and emotions
                and all(isinstance(e, str) and e for e in emotions)
                and len(set(emotions)) == len(emotions)
            ):
                raise ValueError("emotions")
            if not (_is_count(layer) and _is_count(n_tokens)):
                raise ValueError("layer or n_tokens")
            mean, std = data["mean"], data["std"]
            for values in (mean, std):
                if not (
                    isinstance(values, list)
                    and len(values) == len(emotions)
                    and all(_is_score(x) for x in values)
                ):
                    raise ValueError("mean or std")
            mean = np.asarray(mean, dtype=np.float64).astype(np.float32)
            std = np.asarray(std, dtype=np.float64).astype(np.float32)
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise ValueError("mean or std out of range")  # std > 0 as a float32 too
            source, key, center = data["source"], data["key"], data.get("center", True)
            if not (isinstance(source, str) and isinstance(key, str) and isinstance(center, bool)):
                raise TypeError("source, key or center")
            return cls(
                emotions=list(emotions),
                layer=layer,
                mean=mean,
                std=std,
                source=source,
                n_tokens=n_tokens,
                key=key,
                center=center,
            )
        except FileNotFoundError:
            raise MonitorError(f"baseline file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise MonitorError(
                f"{path} is not an emovec baseline ({type(exc).__name__}); "
                "write one with `emovec monitor --calibrate-out FILE` or Baseline.save"
            ) from None

    def check(self, vectors: EmotionVectors, layer: int, center: bool = True) -> None:
        """Refuse a baseline measured with other vectors, another layer or other centring."""
        if self.key != _vectors_key(vectors, layer, center):
            raise MonitorError(
                f"this baseline was measured with other vectors or layer (its layer {self.layer}); "
                "calibrate again for these vectors"
            )


BASELINE_FORMAT = "emovec.baseline/1"
#: Calibration tokens skipped at the start of each text: the first positions of a sequence
#: carry huge, content-free activations that would widen every emotion's spread.
SKIP_FIRST = 4


def neutral_calibration_texts(lm: LanguageModel, limit: int = 64) -> list[str]:
    """The bundled neutral dialogues, rendered in the model's own chat format when it has one."""
    from emovec.corpus import load_corpus

    dialogues = load_corpus("curated").neutral[:limit]
    if lm.has_chat_template:
        return [lm.format_chat(d["turns"], add_generation_prompt=False) for d in dialogues]
    from emovec.corpus import render_dialogue

    return [render_dialogue(d) for d in dialogues]


def calibrate(
    lm: LanguageModel,
    vectors: EmotionVectors,
    texts: Sequence[str] | None = None,
    layer: int | None = None,
    center: bool = True,
    limit: int = 64,
    max_tokens: int = 256,
    batch_size: int = 8,
    cache: bool | str | Path = True,
    on_start: Callable[[int, int], None] | None = None,
    progress: bool = False,
) -> Baseline:
    """Measure each emotion's score mean and spread over calibration tokens, once.

    ``texts`` defaults to the first ``limit`` neutral dialogues (so z = "how unusual compared
    with an ordinary assistant conversation"); pass your own traffic instead to calibrate on
    it. Each text is cut to ``max_tokens``. With ``cache=True`` the result is kept under
    ``$EMOVEC_CACHE/baselines`` keyed by vectors, layer and texts, and reused; a path caches
    there instead; ``False`` always recomputes. When it does measure (no cached result),
    ``on_start(texts, tokens)`` is called first, so that a caller can say what is coming and
    how long it may take; ``progress`` counts the tokens run.
    """
    from emovec.extraction import right_padded
    from emovec.hooks import run_to_layer
    from emovec.models import cache_dir

    vectors.check_model(lm)
    layer = vectors.default_layer if layer is None else layer
    key = _vectors_key(vectors, layer, center)
    source = "neutral dialogues" if texts is None else "user texts"
    texts = list(neutral_calibration_texts(lm, limit) if texts is None else texts)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MonitorError("no calibration text: give at least one non-empty text")
    digest = hashlib.sha256(json.dumps([key, max_tokens, texts]).encode()).hexdigest()[:16]
    if cache is True:
        cache_path: Path | None = cache_dir() / "baselines" / f"{digest}.json"
    else:
        cache_path = Path(cache) if cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = Baseline.load(cache_path)
            cached.check(vectors, layer, center)
            return cached
        except MonitorError:
            pass  # stale or damaged: measure again and overwrite
    monitor = Monitor(lm, vectors, layer=layer, center=center)
    rows = [lm.encode(t)[:max_tokens] for t in texts]
    if on_start is not None:
        on_start(len(rows), sum(map(len, rows)))
    total = np.zeros(len(monitor.emotions), dtype=np.float64)
    square = np.zeros_like(total)
    count = 0
    from emovec.progress import token_progress

    with token_progress(sum(map(len, rows)), "calibrating", progress) as advance:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            ids, attention = right_padded(batch, lm.tokenizer.pad_token_id)
            monitor.chunks.clear()
            with monitor.watching():
                run_to_layer(
                    lm.model,
                    layer,
                    input_ids=ids.to(lm.device),
                    attention_mask=attention.to(lm.device),
                )
            scores = monitor.scores().astype(np.float64)
            keep = attention.numpy().astype(bool)
            keep[:, :SKIP_FIRST] = False
            chosen = scores[keep]
            total += chosen.sum(axis=0)
            square += (chosen**2).sum(axis=0)
            count += len(chosen)
            advance(sum(map(len, batch)))
    if count < 2:
        raise MonitorError("calibration texts are too short: give texts of a few sentences")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 1e-12))
    baseline = Baseline(
        emotions=list(monitor.emotions),
        layer=layer,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        source=f"{source} ({len(texts)} texts)",
        n_tokens=count,
        key=key,
        center=center,
    )
    if cache_path is not None:
        baseline.save(cache_path)
    return baseline


# --------------------------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------------------------

RULE_KINDS = ("level", "rise", "spike")
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
                kwargs["steer"] = tuple(_parse_strengths(action.split("=", 1)[1]).items())
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


def _parse_strengths(text: str) -> dict[str, float]:
    """``calm+0.3,happy-0.2`` -> {"calm": 0.3, "happy": -0.2}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z][A-Za-z \-]*?)\s*([+-]\s*[0-9.]+)\s*", part)
        if not match:
            raise MonitorError(f"strength {part!r} should look like calm+0.3")
        out[match.group(1)] = float(match.group(2).replace(" ", ""))
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


class _RuleTracker:
    """Evaluates one rule on one reply's z-scores as tokens arrive."""

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


# --------------------------------------------------------------------------------------------
# Hidden-state flag: high inside, absent from the visible text
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the hidden-state flag needs vaderSentiment: pip install vaderSentiment"
        ) from exc
    return SentimentIntensityAnalyzer()


#: Sign of each of the study's ten emotion families, for words VADER's lexicon lacks
#: ("afraid", "terrified" ...): the families split cleanly by valence.
FAMILY_VALENCE = {
    "Exuberant Joy": 1.0,
    "Peaceful Contentment": 1.0,
    "Compassionate Gratitude": 1.0,
    "Competitive Pride": 1.0,
    "Playful Amusement": 1.0,
    "Depleted Disengagement": -1.0,
    "Vigilant Suspicion": -1.0,
    "Hostile Anger": -1.0,
    "Fear and Overwhelm": -1.0,
    "Despair and Shame": -1.0,
}


@lru_cache(maxsize=1024)
def emotion_valence(emotion: str) -> float:
    """Valence of an emotion concept (-1..1), judged without the model.

    VADER's score of the word itself; for words VADER does not know, half the sign of the
    emotion's family in the study's clustering; 0 when neither has an opinion.
    """
    value = float(_vader().polarity_scores(emotion)["compound"])
    if abs(value) >= 0.05:
        return value
    try:
        from emovec.catalog import family_of

        return 0.5 * FAMILY_VALENCE.get(family_of(emotion), 0.0)
    except ValueError:
        return 0.0


def text_sentiment(text: str) -> float:
    """VADER compound sentiment of visible text (-1..1)."""
    return float(_vader().polarity_scores(text)["compound"])


@dataclass(frozen=True)
class HiddenStateCheck:
    """Settings of the hidden-state flag.

    A span of at least ``min_tokens`` reply tokens whose z for an emotion stays at or above
    ``threshold`` is flagged when the visible text around it (the span plus ``context`` tokens
    either side) does not carry that emotion's valence by at least ``margin`` of VADER's
    compound score: e.g. high internal *desperate* while the words read neutral or upbeat.
    Emotions VADER gives no valence (surprised, alert...) are never flagged.
    """

    threshold: float = 3.0
    min_tokens: int = 2
    context: int = 6
    margin: float = 0.05


@dataclass
class HiddenSpan:
    """A span where an emotion is high inside the model but not visible in the text."""

    row: int
    emotion: str
    start: int
    end: int
    peak_z: float
    text: str
    text_sentiment: float
    emotion_valence: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("peak_z", "text_sentiment", "emotion_valence"):
            data[key] = round(float(data[key]), 4)
        return data


def hidden_spans(
    pieces: Sequence[str],
    z: np.ndarray,
    emotions: Sequence[str],
    check: HiddenStateCheck = HiddenStateCheck(),  # noqa: B008 - frozen, shared safely
    row: int = 0,
) -> list[HiddenSpan]:
    """Spans of one reply where an emotion runs high in the residual stream but not in the text."""
    found: list[HiddenSpan] = []
    ever_high = (z >= check.threshold).any(axis=0) if len(z) else np.zeros(len(emotions), bool)
    for column, emotion in enumerate(emotions):
        if not ever_high[column]:
            continue
        valence = emotion_valence(emotion)
        if abs(valence) < check.margin:
            continue
        high = z[:, column] >= check.threshold
        t = 0
        while t < len(high):
            if not high[t]:
                t += 1
                continue
            end = t
            while end + 1 < len(high) and high[end + 1]:
                end += 1
            if end - t + 1 >= check.min_tokens:
                lo, hi = max(0, t - check.context), min(len(pieces), end + 1 + check.context)
                visible = "".join(pieces[lo:hi])
                sentiment = text_sentiment(visible)
                if sentiment * math.copysign(1.0, valence) < check.margin:
                    peak = float(z[t : end + 1, column].max())
                    found.append(
                        HiddenSpan(row, emotion, t, end, peak, visible, sentiment, valence)
                    )
            t = end + 1
    return sorted(found, key=lambda s: (s.start, s.emotion))


# --------------------------------------------------------------------------------------------
# Live monitoring of generation
# --------------------------------------------------------------------------------------------


#: decimals of raw scores (cosines) in records: z derived from them is off by < 1e-4
#: for any baseline spread above 0.005
RAW_DIGITS = 6


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    """Python floats with short JSON forms; one vectorised call, as it runs for every token."""
    return np.round(values.astype(np.float64), digits).tolist()


@dataclass
class TokenEvent:
    """One reply token, delivered as soon as its scores exist."""

    row: int
    index: int
    position: int
    token_id: int
    piece: str
    raw: np.ndarray
    z: np.ndarray
    emotions: list[str]
    fired: list[Alert] = field(default_factory=list)
    active: list[str] = field(default_factory=list)

    @property
    def top(self) -> tuple[str, float]:
        """The emotion with the highest z at this token."""
        i = int(np.argmax(self.z))
        return self.emotions[i], float(self.z[i])

    def to_record(self, with_z: bool = True) -> dict[str, Any]:
        """This token as a JSON record; ``with_z=False`` is the trace's form.

        A trace stores raw scores only, as its header holds the baseline that turns them into
        z-scores (:func:`read_trace` adds them back): with 171 emotions, writing both doubled
        the cost of the largest per-token item.
        """
        record = {
            "type": "token",
            "row": self.row,
            "index": self.index,
            "position": self.position,
            "token_id": self.token_id,
            "piece": self.piece,
            "raw": dict(zip(self.emotions, _rounded(self.raw, RAW_DIGITS), strict=True)),
            "alerts": [a.rule.name for a in self.fired],
            "active": self.active,
        }
        if with_z:
            record["z"] = dict(zip(self.emotions, _rounded(self.z, 3), strict=True))
        return record


@dataclass
class MonitoredReply:
    """A finished reply with every token's scores, alert firings and hidden-state spans."""

    row: int
    prompt: str
    text: str
    pieces: list[str]
    token_ids: list[int]
    emotions: list[str]
    raw: np.ndarray
    z: np.ndarray
    alerts: list[Alert]
    hidden: list[HiddenSpan]
    stopped_by: str
    steering: dict[str, float] = field(default_factory=dict)
    #: how tokens were picked ({"temperature": 0.0} is greedy), with the seed that replays it
    sampling: dict[str, Any] = field(default_factory=dict)
    #: wall time of the whole ``generate`` call, and the part of it that was monitoring work
    #: (scoring hooks, per-token work, the last token's pass, set-up and trace), timed in place
    seconds: float = 0.0
    monitor_seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "reply",
            "row": self.row,
            "prompt": self.prompt,
            "text": self.text,
            "n_tokens": len(self.pieces),
            "stopped_by": self.stopped_by,
            "steering": self.steering,
            "sampling": self.sampling,
            "seconds": round(self.seconds, 4),
            "monitor_seconds": round(self.monitor_seconds, 4),
            "alerts": [a.to_dict() for a in self.alerts],
            "hidden": [h.to_dict() for h in self.hidden],
        }


class _Row:
    """Bookkeeping of one reply in a (possibly batched) generation."""

    def __init__(self, row: int, prompt: str, trackers: list[_RuleTracker]) -> None:
        self.row, self.prompt, self.trackers = row, prompt, trackers
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.raw: list[np.ndarray] = []
        self.z: list[np.ndarray] = []
        self.alerts: list[Alert] = []
        self.text = ""
        self.done = False
        self.stopped_by = "length"
        self.prompt_tokens = 0


class TraceWriter:
    """Appends one JSON line per record; a crash loses at most ``flush_every_s`` of tokens.

    Header and reply records are written and flushed at once. Token events are kept and
    turned into lines together at most every ``flush_every_s`` seconds (and on close): one
    line per token right after each decode step cost several times more, as the forward pass
    leaves every cache cold, and a flush per token cost more than all other per-token work.
    """

    def __init__(
        self, path: str | Path, meta: Mapping[str, Any], flush_every_s: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_every_s = flush_every_s
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._pending: list[TokenEvent] = []
        self._flushed = time.monotonic()
        self.write({"type": "meta", **meta})

    def write(self, record: Mapping[str, Any]) -> None:
        """Write a record now, after any pending tokens, and flush."""
        self._file.write(self._lines() + json.dumps(record, ensure_ascii=False) + "\n")
        self._flush()

    def token(self, event: TokenEvent) -> None:
        """Queue a token's record; written with the others once ``flush_every_s`` has passed."""
        self._pending.append(event)
        if time.monotonic() - self._flushed >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write every pending token record and flush the file."""
        self._file.write(self._lines())
        self._flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def _lines(self) -> str:
        pending, self._pending = self._pending, []
        return "".join(
            json.dumps(e.to_record(with_z=False), ensure_ascii=False) + "\n" for e in pending
        )

    def _flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()


@dataclass
class Trace:
    """A trace file read back: header, token records, and one reply record per row."""

    meta: dict[str, Any]
    tokens: list[dict[str, Any]]
    replies: list[dict[str, Any]]

    def row(self, row: int = 0) -> list[dict[str, Any]]:
        return [t for t in self.tokens if t["row"] == row]


def read_trace(path: str | Path, max_records: int = 200_000) -> Trace:
    """Read a JSONL trace; a damaged line is a clear error naming its line number.

    A last line cut short (the writer was killed, or the file was copied while being written)
    is dropped and everything before it is read; damage anywhere else is a
    :class:`MonitorError`, as is every record of the wrong shape: whatever the file holds,
    the result is a :class:`Trace` or one :class:`MonitorError`.
    """
    path = Path(path)
    meta: dict[str, Any] | None = None
    tokens: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if number > max_records:
                    raise MonitorError(f"{path} has more than {max_records} records")
                torn = not line.endswith(b"\n")  # only the last line can lack its newline
                try:
                    text = line.decode("utf-8")
                    if not text.strip():
                        continue
                    record = _parse_record(text)
                except UnicodeDecodeError:
                    if torn:
                        break
                    raise MonitorError(f"{path} line {number} is not UTF-8 text") from None
                except ValueError:
                    if torn:
                        break
                    raise MonitorError(f"{path} line {number} is not a trace record") from None
                where = f"{path} line {number}"
                kind = record["type"]
                if kind == "meta":
                    if meta is not None:
                        raise MonitorError(f"{where} is a second trace header")
                    meta = _check_trace_meta(where, record)
                elif kind in ("token", "reply"):
                    if meta is None:
                        raise MonitorError(
                            f"{where} comes before the trace header: not an emovec monitor trace"
                        )
                    if kind == "token":
                        tokens.append(_check_token(where, record, meta["emotions"]))
                    else:
                        replies.append(_check_reply(where, record))
    except FileNotFoundError:
        raise MonitorError(f"trace file not found: {path}") from None
    except OSError as exc:
        raise MonitorError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    if meta is None:
        raise MonitorError(f"{path} has no trace header: not an emovec monitor trace")
    _add_z(path, meta, tokens)
    return Trace(meta, tokens, replies)


#: Largest magnitude accepted for a score in a trace: any float64 arithmetic on it stays finite
#: or overflows to inf (which is then refused), never raises.
_MAX_SCORE = 1e300


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _parse_record(text: str) -> dict[str, Any]:
    """One trace line as a record with a string ``type``; ValueError if it is none."""
    try:
        record = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise ValueError("not a trace record")
    return record


def _is_count(value: Any) -> bool:
    """An integer >= 0 (and not a bool, which JSON keeps apart)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_score(value: Any) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and -_MAX_SCORE <= value <= _MAX_SCORE


def _scores_of(value: Any, emotions: list[str]) -> bool:
    """Whether ``value`` maps every one of ``emotions`` to a number."""
    if not isinstance(value, dict):
        return False
    try:
        return all(_is_score(value[e]) for e in emotions)
    except (KeyError, TypeError):
        return False


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def _check_trace_meta(where: str, record: dict[str, Any]) -> dict[str, Any]:
    """The trace header: its emotions, and the baseline that turns raw scores into z."""
    emotions = record.get("emotions")
    if not _is_list_of(emotions, str) or not emotions or len(set(emotions)) != len(emotions):
        raise MonitorError(f"{where}: the header's 'emotions' must be a list of unique names")
    baseline = record.get("baseline")
    if baseline is not None:
        if not (
            isinstance(baseline, dict)
            and _scores_of(baseline.get("mean"), emotions)
            and _scores_of(baseline.get("std"), emotions)
        ):
            raise MonitorError(
                f"{where}: the header's baseline needs a mean and a std (numbers) per emotion"
            )
        if not all(baseline["std"][e] > 0 for e in emotions):
            raise MonitorError(f"{where}: the header's baseline std must be positive")
    if "layer" in record and not _is_count(record["layer"]):
        raise MonitorError(f"{where}: the header's 'layer' must be an integer >= 0")
    for key, kind in (("model", str), ("rules", list), ("hidden", dict)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise MonitorError(f"{where}: the header's {key!r} must be a {kind.__name__}")
    return record


def _check_token(where: str, record: dict[str, Any], emotions: list[str]) -> dict[str, Any]:
    """A token record: row, index, piece and a raw score (and maybe a z) per emotion."""
    for key in ("row", "index"):
        if not _is_count(record.get(key)):
            raise MonitorError(f"{where}: token {key!r} must be an integer >= 0")
    for key in ("position", "token_id"):
        if key in record and not _is_count(record[key]):
            raise MonitorError(f"{where}: token {key!r} must be an integer >= 0")
    if not isinstance(record.get("piece"), str):
        raise MonitorError(f"{where}: token 'piece' must be a string")
    if not _scores_of(record.get("raw"), emotions):
        raise MonitorError(f"{where}: token 'raw' must hold a number for every emotion")
    if "z" in record and not _scores_of(record["z"], emotions):
        raise MonitorError(f"{where}: token 'z' must hold a number for every emotion")
    for key in ("alerts", "active"):
        if key in record and not _is_list_of(record[key], str):
            raise MonitorError(f"{where}: token {key!r} must be a list of rule names")
    return record


def _check_reply(where: str, record: dict[str, Any]) -> dict[str, Any]:
    """A reply record: its row, and the right types for the fields that readers use."""
    if not _is_count(record.get("row")):
        raise MonitorError(f"{where}: reply 'row' must be an integer >= 0")
    if "n_tokens" in record and not _is_count(record["n_tokens"]):
        raise MonitorError(f"{where}: reply 'n_tokens' must be an integer >= 0")
    kinds = {
        "prompt": str,
        "text": str,
        "stopped_by": str,
        "steering": dict,
        "sampling": dict,
        "alerts": list,
        "hidden": list,
    }
    for key, kind in kinds.items():
        if key in record and not isinstance(record[key], kind):
            raise MonitorError(f"{where}: reply {key!r} must be a {kind.__name__}")
    for key in ("alerts", "hidden"):
        if key in record and not all(isinstance(a, dict) for a in record[key]):
            raise MonitorError(f"{where}: reply {key!r} must be a list of records")
    return record


def _add_z(path: Path, meta: Mapping[str, Any], tokens: list[dict[str, Any]]) -> None:
    """Give token records without z-scores their z, from the raw scores and the header.

    Records and header were checked by :func:`read_trace`: every token has a number per
    emotion, and a baseline, when present, a mean and a positive std per emotion.
    """
    missing = [(number, t) for number, t in enumerate(tokens, 1) if "z" not in t]
    if not missing:
        return
    baseline = meta.get("baseline")
    if baseline is None:
        raise MonitorError(
            f"{path}: the header lacks what z-scores need (baseline, emotions, raw scores): "
            f"token record {missing[0][0]} has raw scores only and there is no baseline"
        )
    emotions = list(meta["emotions"])
    mean = np.array([baseline["mean"][e] for e in emotions], dtype=np.float64)
    std = np.array([baseline["std"][e] for e in emotions], dtype=np.float64)
    for number, record in missing:
        raw = np.array([record["raw"][e] for e in emotions], dtype=np.float64)
        with np.errstate(all="ignore"):
            z = (raw - mean) / std
        if not np.isfinite(z).all():
            raise MonitorError(
                f"{path}: token record {number}: its z-scores are out of range "
                "(raw scores or baseline std are not plausible)"
            )
        record["z"] = dict(zip(emotions, _rounded(z, 3), strict=True))


class _Watch:
    """The per-step work during ``generate``: a scoring hook and a stopping criterion.

    :meth:`score` runs inside each decode step at the monitored layer and scores the token fed
    into that step (the previous step's pick); the prompt's prefill is not scored. The
    stopping criterion runs after the step and delivers that token with its scores, so each
    reply token arrives one step after it is sampled; returning True for a row ends it (the
    stop action, or a cancel).
    """

    def __init__(self, live: LiveMonitor, rows: list[_Row], prompt_width: int, on_token, cancel):
        self.live, self.rows, self.width = live, rows, prompt_width
        self.on_token, self.cancel = on_token, cancel
        self.latest: tuple[int, torch.Tensor] | None = None
        self.steer_active = torch.zeros(len(rows))
        self.eos = set(live.eos_ids)
        self.seconds = 0.0  # time spent here: scoring and per-token work of the monitor
        self._stop: torch.Tensor | None = None  # the last answer, on the model's device
        self._stopped: list[bool] = []

    def score(self, _layer: int, hidden: torch.Tensor, offset: int) -> None:
        """Residual hook: scores [batch, emotions] of the newest position of a decode step,
        left on the device (read after the step, with the token ids, in one copy)."""
        if offset < self.width:
            return
        start = time.perf_counter()
        self.latest = (offset + hidden.shape[1] - 1, self.live._score.on_device(hidden[:, -1]))
        self.seconds += time.perf_counter() - start

    def to_host(self, chunk: torch.Tensor, ids: torch.Tensor) -> tuple[list[int], np.ndarray]:
        """Token ids [batch] and raw scores [batch, emotions] on the host, in one copy.

        On a GPU every read waits for the device, so the ids ride along as one more column
        of the scores (float32 holds every id below 2**24 exactly; float64 beyond).
        """
        dtype = torch.float32 if self.live.vocab_size < 2**24 else torch.float64
        packed = torch.cat([chunk.to(dtype), ids.to(chunk.device, dtype).unsqueeze(1)], dim=1)
        host = packed.numpy() if packed.device.type == "cpu" else packed.cpu().numpy()
        return host[:, -1].astype(np.int64).tolist(), host[:, :-1].astype(np.float32)

    def __call__(self, input_ids: torch.Tensor, scores=None, **_: Any) -> torch.Tensor:
        start = time.perf_counter()
        if self.latest is not None:
            offset, chunk = self.latest
            ids, raw = self.to_host(chunk, input_ids[:, offset])
            z = self.live.z(raw)
            for row, state in enumerate(self.rows):
                if not state.done:
                    self.live._accept(state, ids[row], raw[row], self, z[row])
        self.latest = None
        if self.cancel is not None and self.cancel.is_set():
            for state in self.rows:
                if not state.done:
                    state.done, state.stopped_by = True, "cancel"
        stopped = [state.done for state in self.rows]
        if self._stop is None or stopped != self._stopped:  # a copy only when a row stops
            self._stop = torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)
            self._stopped = stopped
        self.seconds += time.perf_counter() - start
        return self._stop


class LiveMonitor:
    """Monitor generation token by token: z-scores, alerts, actions, hidden-state flags, trace.

    One object holds the settings (emotions, layer, baseline, rules) and can run many
    generations; each :meth:`generate` scores every reply token at ``layer`` as it is produced
    and calls ``on_token`` with a :class:`TokenEvent`; :meth:`stream` yields the same events.
    """

    def __init__(
        self,
        lm: LanguageModel,
        vectors: EmotionVectors,
        emotions: Sequence[str] | None = None,
        layer: int | None = None,
        baseline: Baseline | None = None,
        rules: Sequence[AlertRule] = (),
        hidden: HiddenStateCheck | None = HiddenStateCheck(),  # noqa: B008 - frozen
        center: bool = True,
    ) -> None:
        vectors.check_model(lm)
        self.lm, self.vectors, self.center = lm, vectors, center
        self.layer = vectors.default_layer if layer is None else layer
        vectors.layer_index(self.layer)
        names = vectors.emotions if emotions is None else emotions
        self.emotions = list(dict.fromkeys(vectors.resolve(e) for e in names))
        self.rules = [replace(r, emotion=vectors.resolve(r.emotion)) for r in rules]
        for rule in self.rules:
            for emotion, _ in rule.steer:
                vectors.resolve(emotion)
            if rule.emotion not in self.emotions:
                self.emotions.append(rule.emotion)
        if baseline is None:
            baseline = calibrate(lm, vectors, layer=self.layer, center=center)
        baseline.check(vectors, self.layer, center)
        self.baseline = baseline
        mean, std = baseline.select(self.emotions)
        self._mean, self._scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
        self._score = CosineScorer(lm, vectors, self.emotions, self.layer, center)
        self.hidden = hidden
        self.eos_ids = lm.eos_ids
        self.vocab_size = int(lm.model.get_input_embeddings().num_embeddings)
        body = backbone(lm.model)
        takes_cache = "cache" in inspect.signature(body.forward).parameters
        self._body, self._cache_arg = body, "cache" if takes_cache else "past_key_values"

    def z(self, raw: np.ndarray) -> np.ndarray:
        """z-scores of raw scores (last axis = this monitor's emotions)."""
        return (raw - self._mean) * self._scale

    def meta(self) -> dict[str, Any]:
        return {
            "emovec": __version__,
            "model": self.lm.name,
            "fingerprint": self.vectors.model.get("fingerprint"),
            "layer": self.layer,
            "emotions": self.emotions,
            "baseline": {
                "source": self.baseline.source,
                "n_tokens": self.baseline.n_tokens,
                "mean": {e: float(m) for e, m in zip(self.emotions, self._mean, strict=True)},
                "std": {e: float(1 / s) for e, s in zip(self.emotions, self._scale, strict=True)},
            },
            "rules": [r.to_dict() for r in self.rules],
            "hidden": asdict(self.hidden) if self.hidden else None,
        }

    # -- per token ------------------------------------------------------------------------

    def _accept(
        self,
        state: _Row,
        token_id: int,
        raw: np.ndarray,
        watch: _Watch,
        z: np.ndarray | None = None,
    ) -> None:
        """Take one scored reply token of one row: decode, z-score (unless given: ``z``, the
        batch's, done at once), rules, actions, deliver."""
        if token_id in watch.eos:
            state.done, state.stopped_by = True, "eos"
            return
        state.ids.append(token_id)
        text = self.lm.tokenizer.decode(state.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            piece = ""
        else:
            piece, state.text = text[len(state.text) :], text
        if z is None:
            z = self.z(raw)
        fired = []
        for tracker in state.trackers:
            alert = tracker.update(z[tracker.column])
            if alert is not None:
                fired.append(alert)
                state.alerts.append(alert)
        active = [t.rule.name for t in state.trackers if t.open is not None]
        event = TokenEvent(
            state.row,
            len(state.ids) - 1,
            state.prompt_tokens + len(state.ids) - 1,
            token_id,
            piece,
            raw,
            z,
            self.emotions,
            fired,
            active,
        )
        state.pieces.append(piece)
        state.raw.append(raw)
        state.z.append(z)
        for alert in fired:
            if alert.action == "stop":
                state.done, state.stopped_by = True, "alert"
            elif alert.action == "steer":
                watch.steer_active[state.row] = 1.0
        if watch.on_token is not None:
            watch.on_token(event)

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 40,
        chat: bool = True,
        temperature: float = 0.0,
        seed: int | None = None,
        steering: Mapping[str, float] | None = None,
        steer_positions: str = "all",
        steer_layers: Sequence[int] | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
        trace: str | Path | TraceWriter | None = None,
        cancel: threading.Event | None = None,
        **generate_kwargs: Any,
    ) -> MonitoredReply | list[MonitoredReply]:
        """Generate replies while monitoring; one prompt gives one reply, a list gives a list.

        ``steering`` (emotion -> strength) steers the whole generation as :func:`steer` does;
        alert rules with a ``steer`` action add their counter-steer to a row from the token
        after they fire. ``cancel`` (a threading.Event) ends generation at the next token.
        """
        from transformers import StoppingCriteriaList

        from emovec.steering import steer as steering_ctx

        started = time.perf_counter()
        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        if not batch or any(not p or not p.strip() for p in batch):
            raise MonitorError("empty prompt: give some text to continue")
        if max_new_tokens < 1:
            raise MonitorError("max_new_tokens must be at least 1")
        texts = [
            self.lm.format_chat([{"role": "user", "content": p}]) if chat else p for p in batch
        ]
        tok = self.lm.tokenizer
        old_side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        finally:
            tok.padding_side = old_side
        setup_start = time.perf_counter()  # what came before, plain generation does too
        width = enc["input_ids"].shape[1]
        column = {e: i for i, e in enumerate(self.emotions)}
        rows = [
            _Row(r, p, [_RuleTracker(rule, column[rule.emotion], r) for rule in self.rules])
            for r, p in enumerate(batch)
        ]
        for state, length in zip(rows, enc["attention_mask"].sum(1).tolist(), strict=True):
            state.prompt_tokens = int(length)
        writer = trace if isinstance(trace, TraceWriter) else None
        own_writer = trace is not None and writer is None
        if own_writer:
            writer = TraceWriter(trace, self.meta())

        def deliver(event: TokenEvent) -> None:
            if writer is not None:
                writer.token(event)
            if on_token is not None:
                on_token(event)

        watch = _Watch(self, rows, width, deliver, cancel)
        edits = self._counter_steer_hooks(watch)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 0.95}
            if temperature > 0
            else {"do_sample": False}
        )
        user_steer = (
            steering_ctx(
                self.lm,
                self.vectors,
                steering,
                layers=steer_layers,
                positions=steer_positions,
                prompt_length=width,
            )
            if steering
            else nullcontext()
        )
        inputs = {k: v.to(self.lm.device) for k, v in enc.items()}
        generate_kwargs = _room_for_last_token(self.lm, generate_kwargs, width + max_new_tokens)
        try:
            with (
                torch.no_grad(),
                user_steer,
                residual_hooks(self.lm.layers, edits, edits=True),
                residual_hooks(self.lm.layers, {self.layer: watch.score}),
            ):
                generation_start = time.perf_counter()
                out = self.lm.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([watch]),
                    return_dict_in_generate=True,
                    **sampling,
                    **generate_kwargs,
                )
                generation_end = time.perf_counter()
                self._score_last(out, inputs, rows, watch)
            replies = [self._finish(state, steering) for state in rows]
            ended = time.perf_counter()
            monitor_seconds = (
                (generation_start - setup_start) + watch.seconds + (ended - generation_end)
            )
            for reply in replies:
                reply.seconds, reply.monitor_seconds = ended - started, monitor_seconds
                reply.sampling = {"temperature": float(temperature), "seed": seed}
            if writer is not None:
                for reply in replies:
                    writer.write(reply.to_record())
        finally:
            if own_writer and writer is not None:
                writer.close()
        return replies[0] if single else replies

    def _counter_steer_hooks(self, watch: _Watch) -> dict[int, Any]:
        """An editing hook at the steering layer that adds each fired rule's counter-steer."""
        wanted = [r for r in self.rules if r.action == "steer"]
        if not wanted:
            return {}
        from emovec.steering import steering_direction

        layer = self.vectors.default_steer_layer
        strengths: dict[str, float] = {}
        for rule in wanted:
            for emotion, strength in rule.steer:
                name = self.vectors.resolve(emotion)
                strengths[name] = strengths.get(name, 0.0) + strength
        delta = steering_direction(self.vectors, strengths, layer).to(
            self.lm.device, self.lm.model.dtype
        )

        def add(_layer: int, hidden: torch.Tensor, offset: int) -> torch.Tensor | None:
            if offset < watch.width or not bool(watch.steer_active.any()):
                return None
            gate = watch.steer_active.to(hidden.device, hidden.dtype).view(-1, 1, 1)
            return hidden + gate * delta

        return {layer: add}

    def _score_last(self, out: Any, inputs: dict[str, torch.Tensor], rows, watch) -> None:
        """Score each row's final pick, which ``generate`` never fed back into the model."""
        sequences = out.sequences
        if sequences.shape[1] <= watch.width:
            return
        last_ids = sequences[:, -1].tolist()
        for state in rows:  # a final end-of-text pick needs no scores
            if not state.done and last_ids[state.row] in watch.eos:
                state.done, state.stopped_by = True, "eos"
        if all(state.done for state in rows):
            return
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        last = sequences[:, -1:]
        mask = torch.cat(
            [inputs["attention_mask"], torch.ones_like(sequences[:, watch.width :])], dim=1
        )
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -1:]
        watch.latest = None
        with stopping_after(self.lm.layers, self.layer), suppress(StopForward):
            self._body(
                input_ids=last,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: cache},
            )
        if watch.latest is None:
            return
        _offset, chunk = watch.latest
        ids, raw = watch.to_host(chunk, sequences[:, -1])
        for state in rows:
            if not state.done:
                self._accept(state, ids[state.row], raw[state.row], watch)

    def _finish(self, state: _Row, steering: Mapping[str, float] | None) -> MonitoredReply:
        n = len(self.emotions)
        raw = np.stack(state.raw) if state.raw else np.zeros((0, n), np.float32)
        z = np.stack(state.z) if state.z else np.zeros((0, n), np.float32)
        hidden = (
            hidden_spans(state.pieces, z, self.emotions, self.hidden, state.row)
            if self.hidden is not None
            else []
        )
        return MonitoredReply(
            row=state.row,
            prompt=state.prompt,
            text=self.lm.tokenizer.decode(state.ids, skip_special_tokens=True),
            pieces=state.pieces,
            token_ids=state.ids,
            emotions=self.emotions,
            raw=raw,
            z=z,
            alerts=state.alerts,
            hidden=hidden,
            stopped_by=state.stopped_by,
            steering=dict(steering or {}),
        )

    def stream(self, prompts: str | Sequence[str], **kwargs: Any) -> Iterator[Any]:
        """Yield each :class:`TokenEvent` as it is produced, then each :class:`MonitoredReply`.

        Generation runs in a worker thread; leaving the loop early cancels it.
        """
        events: queue.Queue = queue.Queue()
        cancel = kwargs.pop("cancel", None) or threading.Event()
        done = object()

        def work() -> None:
            try:
                result = self.generate(prompts, on_token=events.put, cancel=cancel, **kwargs)
                for reply in result if isinstance(result, list) else [result]:
                    events.put(reply)
            except BaseException as exc:  # handed to the consumer
                events.put(exc)
            finally:
                events.put(done)

        worker = threading.Thread(target=work, name="emovec-monitor", daemon=True)
        worker.start()
        try:
            while (item := events.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()


def _room_for_last_token(
    lm: LanguageModel, generate_kwargs: dict[str, Any], length: int
) -> dict[str, Any]:
    """``generate_kwargs`` with a static KV cache one position longer than generation needs.

    ``generate`` sizes a static cache for the tokens it feeds back, but the monitor runs one
    more pass, for the last pick (:meth:`LiveMonitor._score_last`), which would write past
    the end. Transformers versions without ``max_cache_len`` are left as they are.
    """
    try:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ALL_STATIC_CACHE_IMPLEMENTATIONS
    except ImportError:
        return generate_kwargs
    kind = generate_kwargs.get("cache_implementation")
    kind = kind or getattr(lm.model.generation_config, "cache_implementation", None)
    if kind not in ALL_STATIC_CACHE_IMPLEMENTATIONS or "max_cache_len" in generate_kwargs:
        return generate_kwargs
    if not hasattr(GenerationConfig(), "max_cache_len"):
        return generate_kwargs
    return {**generate_kwargs, "max_cache_len": length}
