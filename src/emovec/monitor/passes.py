"""Raw scores of every forward pass at one layer: the low-level recorder under the monitor.

:class:`ScoreRecorder` (alias :class:`Monitor`) hooks one layer and keeps the cosine scores of
every position each forward pass computes (a prompt's prefill, then one position per decode
step). It knows nothing of baselines, alerts or replies: calibration, case studies and your
own generation loops use it; :class:`~emovec.monitor.LiveMonitor` is the full live monitor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from emovec.generation import chat_prompt, generate_ids
from emovec.hooks import residual_hooks
from emovec.models import LanguageModel
from emovec.scoring import CosineScorer
from emovec.vectors import EmotionVectors

#: callback(offset, scores [batch, new positions, emotions]) after every forward pass
ScoreCallback = Callable[[int, np.ndarray], None]


@dataclass
class ScoreRecorder:
    """Records raw per-position scores of every forward pass; no baseline, no alerts.

    Use it around any forward pass or ``generate`` call of your own (``with
    recorder.watching(): ...``) when you want the raw cosines of prompt and reply together,
    e.g. to compare with :func:`emovec.read`; for z-scores, alert rules, actions and traces
    while generating, use :class:`~emovec.monitor.LiveMonitor`. The scores are exactly those
    of :func:`emovec.reading.read` on the same tokens (same layer, centring and scorer).
    """

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
        self.scorer = CosineScorer(
            self.vectors, self.emotions, self.layer, self.center, device=self.lm.device
        )

    def _hook(self, _layer: int, hidden: torch.Tensor, offset: int) -> None:
        scores = self.scorer(hidden)
        self.chunks.append((offset, scores))
        if self.callback is not None:
            self.callback(offset, scores)

    @contextmanager
    def watching(self) -> Iterator[ScoreRecorder]:
        """Within the block every forward pass of the model is scored."""
        with torch.no_grad(), residual_hooks(self.lm.layers, {self.layer: self._hook}):
            yield self

    def scores(self) -> np.ndarray:
        """All scored positions in order: [batch, positions, emotions]."""
        ordered = [c for _, c in sorted(self.chunks, key=lambda c: c[0])]
        return np.concatenate(ordered, axis=1)


#: The recorder's first name, kept for existing code: same class as :class:`ScoreRecorder`.
Monitor = ScoreRecorder


def generate_with_scores(
    lm: LanguageModel,
    vectors: EmotionVectors,
    prompt: str,
    emotions: Sequence[str] | None = None,
    layer: int | None = None,
    max_new_tokens: int = 40,
    chat: bool = True,
    callback: ScoreCallback | None = None,
) -> tuple[list[int], np.ndarray, ScoreRecorder]:
    """One greedy reply with the raw scores of prompt and reply; returns (ids, scores, recorder).

    The quick one-call form of :class:`ScoreRecorder`: one prompt, greedy, no baseline.
    ``scores`` [positions, emotions] covers the prompt and every generated token that was fed
    back into the model (all but the last one sampled). For z-scores, alerts, batches,
    sampling or a trace use :meth:`emovec.monitor.LiveMonitor.generate`.
    """
    ids = torch.tensor([lm.encode(chat_prompt(lm, prompt, chat))])
    recorder = ScoreRecorder(lm, vectors, emotions=emotions, layer=layer, callback=callback)
    with recorder.watching():
        out = generate_ids(lm, ids, max_new_tokens=max_new_tokens)
    return out[0].tolist(), recorder.scores()[0], recorder


#: The first name of :func:`generate_with_scores`, kept for existing code.
monitored_generate = generate_with_scores
