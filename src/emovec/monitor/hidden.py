"""The hidden-state flag: an emotion high inside the model but absent from the visible text.

The text side is judged without the model, by VADER's sentiment of the words around a span;
the model side by the span's z-scores. A span is flagged when the words do not carry the
emotion's valence (e.g. high internal *desperate* while the reply reads neutral or upbeat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from emovec.errors import MissingDependencyError


@lru_cache(maxsize=1)
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "the hidden-state flag needs vaderSentiment: pip install vaderSentiment "
            "(or reinstall emovec, which depends on it)"
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
    except ValueError:  # not in the catalog: no family to go by
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
