"""Does steering move the sentiment of replies? A check judged by something other than the vectors.

:func:`steering_sentiment` steers generation toward one emotion and toward another and scores
the replies with VADER, a lexicon sentiment scorer that knows nothing of the model, then asks
whether the difference could be chance (a permutation test). The main job
(:mod:`emovec.apps.pipeline`) runs it and the scorecard reads its ``steering_sentiment.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from emovec.errors import MissingDependencyError
from emovec.generation import generate
from emovec.models import LanguageModel
from emovec.progress import count_progress
from emovec.steering import steer
from emovec.vectors import EmotionVectors

DEFAULT_PROMPTS = [
    "Tell me about your day.",
    "Describe the weather outside.",
    "What do you think about Mondays?",
    "Write a sentence about a walk in the park.",
    "How was the meeting this morning?",
    "Describe your neighbour's new car.",
    "What is it like to move to a new city?",
    "Write two sentences about a birthday party.",
]


def sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment (-1..1) of each text."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "the sentiment scorer needs vaderSentiment: pip install vaderSentiment"
        ) from exc
    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts])


def permutation_pvalue(a: np.ndarray, b: np.ndarray, rounds: int = 10000, seed: int = 0) -> float:
    """One-sided p-value that mean(a) > mean(b) arose by chance (label permutation)."""
    rng = np.random.default_rng(seed)
    observed = a.mean() - b.mean()
    pooled = np.concatenate([a, b])
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        hits += pooled[: len(a)].mean() - pooled[len(a) :].mean() >= observed
    return (hits + 1) / (rounds + 1)


@dataclass
class SteeringSentiment:
    """Mean VADER sentiment of replies per steering condition, and the one-sided p-value that
    ``+positive`` beats ``+negative`` by chance."""

    positive: str
    negative: str
    strength: float
    layers: list[int]
    mean_sentiment: dict[str, float]
    p_value: float
    n_per_condition: int
    samples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def steering_sentiment(
    lm: LanguageModel,
    vectors: EmotionVectors,
    positive: str = "happy",
    negative: str = "sad",
    strength: float = 0.5,
    layers: Sequence[int] | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> SteeringSentiment:
    """Generate under +positive, +negative and no steering; compare VADER sentiment.

    ``progress`` shows each condition's batch as it finishes (minutes on a CPU)."""
    batch = [p for p in prompts for _ in range(samples_per_prompt)]
    outputs: dict[str, list[str]] = {}
    conditions = {
        "none": {},
        f"+{positive}": {positive: strength},
        f"+{negative}": {negative: strength},
    }
    with count_progress(len(conditions), "steering check", "conditions", progress) as tick:
        for name, strengths in conditions.items():
            with steer(lm, vectors, strengths, layers=layers):
                outputs[name] = generate(
                    lm, batch, max_new_tokens=max_new_tokens, temperature=0.8, seed=seed
                )
            tick(1)
    scores = {name: sentiment(texts) for name, texts in outputs.items()}
    return SteeringSentiment(
        positive=positive,
        negative=negative,
        strength=strength,
        layers=list(layers) if layers is not None else [vectors.default_steer_layer],
        mean_sentiment={k: round(float(v.mean()), 4) for k, v in scores.items()},
        p_value=permutation_pvalue(scores[f"+{positive}"], scores[f"+{negative}"]),
        n_per_condition=len(batch),
        samples=outputs,
    )
