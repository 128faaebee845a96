"""Watching emotion vectors while a model generates: per-token scores as they are produced.

A :class:`Monitor` registers one reading hook at one layer. Every forward pass (the prompt's
prefill, then one pass per generated token) yields the scores of the positions it computed,
delivered to a callback as they arrive and kept in order. The scores are exactly those of
:func:`emovec.reading.read` on the same tokens (same layer, same centring, same cosine), so a
live trace and a later reading of the finished text agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from emovec.hooks import residual_hooks
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

#: callback(offset, scores [batch, new positions, emotions]) after every forward pass
ScoreCallback = Callable[[int, np.ndarray], None]


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
        row = self.vectors.layer_index(self.layer)
        names = self.vectors.emotions if self.emotions is None else self.emotions
        self.emotions = [self.vectors.resolve(e) for e in names]
        index = [self.vectors.emotions.index(e) for e in self.emotions]
        dtype, device = self.lm.model.dtype, self.lm.device
        self._directions_t = self.vectors.vectors[row][index].T.contiguous().to(device, dtype)
        mean = self.vectors.mean_activation[row] if self.center else torch.zeros(self.lm.d_model)
        self._mean = mean.to(device, dtype)
        cpu_fp32 = device.type == "cpu" and dtype == torch.float32
        self._numpy = (self._mean.numpy(), self._directions_t.numpy()) if cpu_fp32 else None

    def _hook(self, _layer: int, hidden: torch.Tensor, offset: int) -> None:
        # The same cosine as reading.cosine_scores, kept lean: this runs on every decode step.
        # On CPU, numpy's small-matrix path costs about half of torch's per-op dispatch.
        if self._numpy is not None:
            mean, directions_t = self._numpy
            x = hidden.detach().numpy().reshape(-1, hidden.shape[-1]) - mean
            scores = x @ directions_t
            scores /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x))[:, None], 1e-12)
            scores = scores.reshape(*hidden.shape[:2], -1)
        else:
            y = hidden.detach() - self._mean
            scores = torch.matmul(y, self._directions_t)
            scores = (scores / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float().cpu().numpy()
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
