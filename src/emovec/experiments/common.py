"""What every experiment shares: emotion selection with clear errors, and readouts of user
messages at many layers in one pass: at the start of the assistant's reply (where the study
reads its sweeps) or over the message's own tokens (how ``read`` summarises a chat message)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emovec.catalog import UnknownEmotionError
from emovec.errors import EmovecError, InputError
from emovec.extraction import right_padded
from emovec.generation import chat_prompt
from emovec.hooks import residual_hooks, run_to_layer
from emovec.models import LanguageModel
from emovec.reading import text_span
from emovec.scoring import CosineScorer
from emovec.vectors import EmotionVectors


class ExperimentError(EmovecError, ValueError):
    """Input an experiment cannot use: a bad template, value, emotion list or model pair."""


def pick_emotions(vectors: EmotionVectors, names: Sequence[str], experiment: str) -> list[str]:
    """Canonical names of ``names``; one error listing every name the vector file lacks."""
    found, missing = [], []
    for name in names:
        try:
            found.append(vectors.resolve(name))
        except UnknownEmotionError:
            missing.append(name)
    if missing:
        raise ExperimentError(
            f"{experiment} needs emotions the vector file lacks: {', '.join(missing)} "
            f"(it has {len(vectors.emotions)}: {', '.join(vectors.emotions[:8])}"
            f"{', ...' if len(vectors.emotions) > 8 else ''}); choose emotions it has or "
            "rebuild the vectors with them (`emovec extract -e ...`)"
        )
    return found


def check_compatible(lm: LanguageModel, vectors: EmotionVectors) -> None:
    """For reading vectors in a model they were not built from: the shapes must agree."""
    ident = lm.identity()
    for key in ("d_model", "n_layers"):
        if ident[key] != vectors.model.get(key):
            raise ExperimentError(
                f"model {lm.name!r} has {key} {ident[key]} but the vectors were built for "
                f"{vectors.model.get(key)} ({vectors.model.get('name')!r}): the two models must "
                "share one architecture"
            )


def chat_ids(lm: LanguageModel, messages: Sequence[str]) -> list[list[int]]:
    """Token ids of each message as a user turn, ending where the assistant's reply starts."""
    return [lm.encode(lm.format_chat([{"role": "user", "content": m}])) for m in messages]


@torch.no_grad()
def padded_pass(
    lm: LanguageModel, rows: Sequence[list[int]], layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded batch through the model up to the deepest of ``layers``: residuals
    [batch, width, len(layers), d_model] (float32, on the model's device) and the attention
    mask [batch, width]. Padding comes after each row's tokens, so under the causal mask it
    never changes them."""
    layers = list(layers)
    input_ids, attention = right_padded(rows, lm.tokenizer.pad_token_id)
    grabbed: dict[int, torch.Tensor] = {}

    def grab(layer: int, hidden: torch.Tensor, _offset: int) -> None:
        grabbed[layer] = hidden.float()

    with residual_hooks(lm.layers, dict.fromkeys(layers, grab)):
        run_to_layer(
            lm.model,
            max(layers),
            input_ids=input_ids.to(lm.device),
            attention_mask=attention.to(lm.device),
        )
    return torch.stack([grabbed[layer] for layer in layers], dim=2), attention


@torch.no_grad()
def last_token_residuals(
    lm: LanguageModel, ids: Sequence[list[int]], layers: Sequence[int], batch_size: int = 16
) -> torch.Tensor:
    """Residual stream at each sequence's last token: [n, len(layers), d_model] (float32)."""
    out = torch.empty(len(ids), len(layers), lm.d_model)
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start : start + batch_size])
        stacked, attention = padded_pass(lm, chunk, layers)
        last = (attention.sum(1) - 1).to(stacked.device)
        out[start : start + len(chunk)] = stacked[torch.arange(len(chunk)), last].cpu()
    return out


def scores_from_residuals(
    residual: torch.Tensor, vectors: EmotionVectors, layers: Sequence[int]
) -> np.ndarray:
    """Centred cosine of residuals [n, L, d] with every emotion at each layer -> [n, L, E]."""
    out = np.empty((residual.shape[0], len(layers), len(vectors.emotions)), dtype=np.float32)
    for i, layer in enumerate(layers):
        out[:, i] = CosineScorer(vectors, layer=layer)(residual[:, i])
    return out


def reply_start_scores(
    lm: LanguageModel,
    vectors: EmotionVectors,
    messages: Sequence[str],
    layers: Sequence[int] | None = None,
    check: bool = True,
) -> np.ndarray:
    """Emotion scores at the start of the reply to each user message: [n, layers, emotions].

    ``check=False`` reads vectors in a model they were not built from (same shapes only),
    which is what comparing a base and a post-trained model needs.
    """
    if check:
        vectors.check_model(lm)
    else:
        check_compatible(lm, vectors)
    layers = list(vectors.layers) if layers is None else list(layers)
    residual = last_token_residuals(lm, chat_ids(lm, messages), layers)
    return scores_from_residuals(residual, vectors, layers)


def resolve_layer(vectors: EmotionVectors, layer: int | None) -> int:
    """The layer to report at (default: the vector file's), checked to be in the file."""
    layer = vectors.default_layer if layer is None else layer
    vectors.layer_index(layer)
    return layer


#: Where a user message is read (:func:`chat_scores`).
POSITIONS = {
    "message": "the user's own tokens, averaged (how `read --chat` summarises a message)",
    "reply-start": "the last prompt token, where the assistant's reply starts (the study's "
    "place for the severity sweeps)",
}


def check_position(position: str) -> str:
    """``position`` if it is one of :data:`POSITIONS`; otherwise an error listing them."""
    if position not in POSITIONS:
        raise InputError(f"unknown position {position!r}: choose one of {', '.join(POSITIONS)}")
    return position


def sequence_residuals(
    lm: LanguageModel, ids: Sequence[list[int]], layers: Sequence[int], batch_size: int = 16
) -> list[torch.Tensor]:
    """Each token sequence's residual stream [tokens, len(layers), d_model] (float32, on the
    host), from right-padded batches of similar lengths (:func:`padded_pass`)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together
    by_index: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        stacked = padded_pass(lm, [ids[i] for i in chunk], layers)[0].cpu()
        for row, i in enumerate(chunk):
            by_index[i] = stacked[row, : len(ids[i])].clone()
    return [by_index[i] for i in range(len(ids))]


def chat_residuals(
    lm: LanguageModel, messages: Sequence[str], layers: Sequence[int]
) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Each message as a user turn: its residual stream [tokens, layers, d_model] and the
    user's tokens [lo, hi) in it, so that several vector files or methods can be scored on
    the same messages (:func:`scores_at_positions`)."""
    prompts = [chat_prompt(lm, text) for text in messages]
    ids = [lm.encode(prompt) for prompt in prompts]
    spans = [
        text_span(lm, prompt, text, len(row))
        for prompt, text, row in zip(prompts, messages, ids, strict=True)
    ]
    return list(zip(sequence_residuals(lm, ids, layers), spans, strict=True))


def scores_at_positions(
    vectors: EmotionVectors,
    layers: Sequence[int],
    cached: Sequence[tuple[torch.Tensor, tuple[int, int]]],
) -> dict[str, np.ndarray]:
    """``{position: scores [n, layers, emotions]}`` of :func:`chat_residuals`' output.
    "message" averages the per-token centred cosines over the user's tokens, exactly as
    ``read(..., chat=True).summary()`` does; "reply-start" is the last prompt token."""
    layers = list(layers)
    shape = (len(cached), len(layers), len(vectors.emotions))
    out = {p: np.empty(shape, dtype=np.float32) for p in POSITIONS}
    for li, layer in enumerate(layers):
        scorer = CosineScorer(vectors, layer=layer)
        for i, (residual, (lo, hi)) in enumerate(cached):
            per_token = scorer(residual[:, li])
            out["message"][i, li] = per_token[lo:hi].mean(axis=0)
            out["reply-start"][i, li] = per_token[-1]
    return out


def chat_scores(
    lm: LanguageModel,
    vectors: EmotionVectors,
    messages: Sequence[str],
    layers: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Each message as a user turn, read at both :data:`POSITIONS` from one pass per message:
    ``{position: scores [n, layers, emotions]}`` (see :func:`scores_at_positions`)."""
    vectors.check_model(lm)
    layers = list(vectors.layers) if layers is None else list(layers)
    return scores_at_positions(vectors, layers, chat_residuals(lm, messages, layers))
