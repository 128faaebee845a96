"""Reading emotion vectors token by token: cosine of the residual stream with each direction."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emovec.hooks import residual_hooks, run_to_layer
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors


@dataclass
class Reading:
    """Per-token emotion scores of one text at one layer: ``scores`` is [tokens, emotions]."""

    tokens: list[str]
    emotions: list[str]
    scores: np.ndarray
    layer: int
    text: str

    @property
    def mean(self) -> dict[str, float]:
        """Mean score of each emotion over all tokens of the text."""
        return dict(zip(self.emotions, self.scores.mean(axis=0).tolist(), strict=True))

    @property
    def last(self) -> dict[str, float]:
        """Scores at the last token (with ``chat=True``: the start of the assistant's reply)."""
        return dict(zip(self.emotions, self.scores[-1].tolist(), strict=True))

    def top(self, k: int = 5, where: str = "mean") -> list[tuple[str, float]]:
        """The k highest emotions for the whole text (``where="mean"``) or its last token."""
        values = self.scores.mean(axis=0) if where == "mean" else self.scores[-1]
        order = np.argsort(-values)[:k]
        return [(self.emotions[i], float(values[i])) for i in order]

    def top_per_token(self, k: int = 3) -> list[list[tuple[str, float]]]:
        order = np.argsort(-self.scores, axis=1)[:, :k]
        return [
            [(self.emotions[j], float(self.scores[t, j])) for j in row]
            for t, row in enumerate(order)
        ]

    def column(self, emotion: str) -> np.ndarray:
        """One emotion's score at every token."""
        return self.scores[:, self.emotions.index(emotion)]

    def numpy(self) -> np.ndarray:
        return self.scores

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``emovec read --json``."""
        return {
            "tokens": self.tokens,
            "emotions": self.emotions,
            "scores": np.round(self.scores, 6).tolist(),
            "mean": {e: round(v, 6) for e, v in self.mean.items()},
            "layer": self.layer,
        }

    def _repr_html_(self) -> str:
        """Tokens tinted by the text's top emotion, with each token's top three on hover."""
        lead = self.top(1)[0][0]
        values = self.column(lead)
        scale = max(float(np.abs(values).max()), 1e-9)
        spans = []
        for token, value, tops in zip(self.tokens, values, self.top_per_token(3), strict=True):
            alpha = abs(float(value)) / scale
            colour = f"rgba(220,60,60,{alpha:.2f})" if value > 0 else f"rgba(60,90,220,{alpha:.2f})"
            tip = ", ".join(f"{e} {v:+.3f}" for e, v in tops)
            spans.append(
                f'<span title="{html.escape(tip)}" style="background:{colour}">'
                f"{html.escape(token)}</span>"
            )
        summary = ", ".join(f"{e} {v:+.3f}" for e, v in self.top(5))
        return (
            f"<div><b>layer {self.layer}</b> &middot; colour = <i>{html.escape(lead)}</i> "
            f"(red +, blue -) &middot; top: {html.escape(summary)}</div>"
            f'<div style="font-family:monospace;white-space:pre-wrap">{"".join(spans)}</div>'
        )


def residuals(lm: LanguageModel, ids: list[int], layers: list[int]) -> dict[int, torch.Tensor]:
    """The residual stream [tokens, d_model] of one token sequence at each requested layer."""
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int, hidden: torch.Tensor, _offset: int) -> None:
        captured[layer] = hidden[0].detach().float().cpu()

    with torch.no_grad(), residual_hooks(lm.layers, dict.fromkeys(layers, capture)):
        run_to_layer(lm.model, max(layers), input_ids=torch.tensor([ids], device=lm.device))
    return captured


def cosine_scores(hidden: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of ``hidden`` [T, d] with every unit direction [E, d] -> [T, E]."""
    return torch.nn.functional.normalize(hidden.float(), dim=-1) @ directions.float().T


def read(
    lm: LanguageModel,
    vectors: EmotionVectors,
    text: str,
    layer: int | None = None,
    chat: bool = False,
    emotions: list[str] | None = None,
    center: bool = True,
) -> Reading:
    """Score every token of ``text`` against the emotion vectors at one layer.

    With ``chat=True`` the text becomes a user message in the model's chat format, ending at
    the start of the assistant's reply, so the last token is where the study reads.
    ``center=True`` (default) subtracts the stories' mean activation before the cosine, which
    removes the large component that all texts share; ``center=False`` gives the study's raw
    cosine.
    """
    if not text or not text.strip():
        raise ValueError("empty text: give some text to read")
    vectors.check_model(lm)
    layer = vectors.default_layer if layer is None else layer
    row = vectors.layer_index(layer)
    names = vectors.emotions if emotions is None else [vectors.resolve(e) for e in emotions]
    directions = vectors.vectors[row][[vectors.emotions.index(e) for e in names]]
    prompt = lm.format_chat([{"role": "user", "content": text}]) if chat else text
    ids = lm.encode(prompt)
    hidden = residuals(lm, ids, [layer])[layer]
    if center:
        hidden = hidden - vectors.mean_activation[row]
    scores = cosine_scores(hidden, directions).numpy()
    tokens = [lm.tokenizer.decode([i]) for i in ids]
    return Reading(tokens=tokens, emotions=names, scores=scores, layer=layer, text=prompt)
