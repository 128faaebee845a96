"""Reading emotion vectors token by token: cosine of the residual stream with each direction.

A text-level summary pools the per-token scores the way extraction pools activations, so a
text is read the way the vectors were built (``pool``, see :data:`POOLS`):

- ``"all"`` (default): every token of the text. On the other-style held-out messages (short
  texts) it classified best: top-5 0.49 of 171 against 0.43 for ``"extraction"`` on the
  default model (docs/fidelity.md), so it is the default;
- ``"extraction"``: the tokens from the ``start_token``-th on (the vector file's setting, 50
  in the study); a text shorter than that, its second half: the first tokens, where the
  attention sink sits and little of the text is known yet, are left out, as in extraction;
- ``"last"``: the last token only (with ``chat=True``: the start of the assistant's reply).

With ``chat=True`` the summary covers the user's text only, never the chat template's
system prompt or role markers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emovec.errors import InputError
from emovec.generation import chat_prompt
from emovec.hooks import residual_hooks, run_to_layer
from emovec.models import LanguageModel
from emovec.scoring import CosineScorer, cosine_scores  # noqa: F401 - cosine_scores: as before
from emovec.vectors import EmotionVectors

#: Text-level pooling choices of :func:`read` (see the module docstring).
POOLS = {
    "extraction": "tokens from the start token on (short texts: their second half), as extraction",
    "all": "every token of the text",
    "last": "the last token",
}


def pooled_positions(n: int, start_token: int, pool: str) -> slice:
    """The token positions (of a text of ``n`` tokens) that a summary averages over."""
    if pool not in POOLS:
        raise InputError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    if pool == "all":
        return slice(0, n)
    if pool == "last":
        return slice(max(n - 1, 0), n)
    return slice(start_token - 1 if n >= start_token else n // 2, n)


@dataclass
class Reading:
    """Per-token emotion scores of one text at one layer: ``scores`` is [tokens, emotions].

    ``span`` is the part of the tokens that is the text proper (all of them, or the user's
    message inside a chat prompt); ``pool`` and ``start_token`` say how :attr:`mean` pools it.
    """

    tokens: list[str]
    emotions: list[str]
    scores: np.ndarray
    layer: int
    text: str
    pool: str = "all"
    start_token: int = 50
    span: tuple[int, int] | None = None

    def summary(self, pool: str | None = None) -> np.ndarray:
        """Pooled score per emotion: [emotions]."""
        lo, hi = self.span if self.span is not None else (0, len(self.tokens))
        window = pooled_positions(hi - lo, self.start_token, pool or self.pool)
        return self.scores[lo:hi][window].mean(axis=0)

    @property
    def mean(self) -> dict[str, float]:
        """Each emotion's score pooled over the text (see ``pool``)."""
        return dict(zip(self.emotions, self.summary().tolist(), strict=True))

    @property
    def last(self) -> dict[str, float]:
        """Scores at the last token (with ``chat=True``: the start of the assistant's reply)."""
        return dict(zip(self.emotions, self.scores[-1].tolist(), strict=True))

    def top(self, k: int = 5, where: str = "mean") -> list[tuple[str, float]]:
        """The k highest emotions for the whole text (``where="mean"``) or its last token."""
        values = self.summary() if where == "mean" else self.scores[-1]
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
            "pool": self.pool,
            "span": list(self.span) if self.span is not None else [0, len(self.tokens)],
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


def read(
    lm: LanguageModel,
    vectors: EmotionVectors,
    text: str,
    layer: int | None = None,
    chat: bool = False,
    emotions: list[str] | None = None,
    center: bool = True,
    pool: str = "all",
) -> Reading:
    """Score every token of ``text`` against the emotion vectors at one layer.

    With ``chat=True`` the text becomes a user message in the model's chat format, ending at
    the start of the assistant's reply, so the last token is where the study reads.
    ``center=True`` (default) subtracts the stories' mean activation before the cosine, which
    removes the large component that all texts share; ``center=False`` gives the study's raw
    cosine. ``pool`` chooses how the text-level summary pools the tokens (:data:`POOLS`).
    """
    if not text or not text.strip():
        raise InputError("empty text: give some text to read")
    if pool not in POOLS:
        raise InputError(f"unknown pooling {pool!r}: choose one of {', '.join(POOLS)}")
    vectors.check_model(lm)
    layer = vectors.default_layer if layer is None else layer
    vectors.layer_index(layer)  # an unknown layer is refused before the model runs
    names = vectors.emotions if emotions is None else [vectors.resolve(e) for e in emotions]
    prompt = chat_prompt(lm, text, chat)
    ids = lm.encode(prompt)
    span = text_span(lm, prompt, text, len(ids)) if chat else None
    hidden = residuals(lm, ids, [layer])[layer]
    scores = CosineScorer(vectors, names, layer, center)(hidden)
    tokens = [str(lm.tokenizer.decode([i])) for i in ids]
    start = int(vectors.params.get("start_token", 50))
    return Reading(
        tokens=tokens,
        emotions=names,
        scores=scores,
        layer=layer,
        text=prompt,
        pool=pool,
        start_token=start,
        span=span,
    )


def text_span(lm: LanguageModel, prompt: str, text: str, n_tokens: int) -> tuple[int, int]:
    """Token positions [lo, hi) of ``text`` inside ``prompt`` (a chat prompt around it)."""
    where = prompt.rfind(text)
    if where < 0:
        return (0, n_tokens)
    try:
        offsets = lm.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)[
            "offset_mapping"
        ]
    except (NotImplementedError, ValueError, KeyError):  # slow tokenizers have no offsets
        return (0, n_tokens)
    end = where + len(text)
    inside = [i for i, (a, b) in enumerate(offsets) if b > where and a < end and b > a]
    return (inside[0], inside[-1] + 1) if inside else (0, n_tokens)
