"""Logit lens: each emotion vector pushed through the final norm and the unembedding. Tokens
it promotes and suppresses say, in the model's own vocabulary, what the direction means."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emovec.experiments.common import pick_emotions, resolve_layer
from emovec.experiments.result import Result
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

#: The study's examples: emotion -> tokens its unembedding promoted.
STUDY_EXAMPLES = {
    "desperate": "desperate, urgent, bankrupt",
    "sad": "grief, tears, lonely",
    "calm": "relax, leisure",
}


def _final_norm_weight(lm: LanguageModel) -> torch.Tensor | None:
    from emovec.hooks import backbone

    norm = getattr(backbone(lm.model), "norm", None) or getattr(backbone(lm.model), "ln_f", None)
    weight = getattr(norm, "weight", None)
    return None if weight is None else weight.detach().float()


def lens_logits(lm: LanguageModel, directions: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits [E, V] of unit directions [E, d].

    The final RMS/LayerNorm rescales a vector and multiplies it by its gain; the rescaling
    does not change a ranking, so only the gain is applied before the unembedding.
    """
    unembed = lm.model.get_output_embeddings().weight.detach().float()
    gain = _final_norm_weight(lm)
    x = directions.float() * (gain if gain is not None else 1.0)
    return x @ unembed.T


def top_tokens(lm: LanguageModel, logits: torch.Tensor, k: int) -> tuple[list, list]:
    """Decoded top-k and bottom-k tokens of each row."""
    dec = lm.tokenizer.decode
    top = [[dec([int(t)]) for t in row] for row in logits.topk(k, dim=-1).indices]
    bottom = [[dec([int(t)]) for t in row] for row in (-logits).topk(k, dim=-1).indices]
    return top, bottom


def self_hit(emotion: str, tokens: Sequence[str]) -> bool:
    """Does a promoted token share the emotion word's stem (>= 4 leading letters)?"""
    word = emotion.split()[0].lower()
    need = min(4, len(word))
    return any(len(t.strip()) >= 3 and t.strip().lower()[:need] == word[:need] for t in tokens)


def hit_rate(lm: LanguageModel, vectors: EmotionVectors, layer: int, k: int = 20) -> float:
    """Share of emotions whose top-k lens tokens contain their own word's stem."""
    top, _ = top_tokens(lm, lens_logits(lm, vectors.at(layer)), k)
    return sum(self_hit(e, t) for e, t in zip(vectors.emotions, top, strict=True)) / len(top)


def run_logit_lens(
    lm: LanguageModel,
    vectors: EmotionVectors,
    emotions: Sequence[str] | None = None,
    layer: int | None = None,
    k: int = 10,
) -> Result:
    """Top and bottom tokens of each emotion vector through the unembedding."""
    vectors.check_model(lm)
    layer = resolve_layer(vectors, layer)
    if emotions is None:
        wanted = [*STUDY_EXAMPLES, "happy", "afraid", "angry", "loving", "proud", "bored"]
        emotions = [e for e in wanted if e in vectors.emotions] or vectors.emotions[:8]
    emotions = pick_emotions(vectors, emotions, "the logit lens")
    logits = lens_logits(lm, vectors.at(layer))
    top, bottom = top_tokens(lm, logits, max(k, 20))
    rate = sum(self_hit(e, t) for e, t in zip(vectors.emotions, top, strict=True)) / len(top)
    index = [vectors.emotions.index(e) for e in emotions]
    rows = [
        [
            e,
            " | ".join(t.strip() or repr(t) for t in top[i][:k]),
            " | ".join(t.strip() or repr(t) for t in bottom[i][:k]),
            STUDY_EXAMPLES.get(e, ""),
        ]
        for e, i in zip(emotions, index, strict=True)
    ]
    result = Result(
        "logit_lens",
        "Logit lens",
        order=40,
        settings={"layer": layer, "k": k, "final_norm_gain": _final_norm_weight(lm) is not None},
        metrics={"self_hit_rate_top20": rate},
        data={
            e: {"top": top[i][:k], "bottom": bottom[i][:k]}
            for e, i in zip(emotions, index, strict=True)
        },
    )
    result.add_table(
        "Tokens each vector promotes and suppresses",
        ["emotion", f"top {k}", f"bottom {k}", "study (top)"],
        rows,
    )
    for e, tokens in STUDY_EXAMPLES.items():
        if e in vectors.emotions:
            result.compare(
                f"'{e}' promotes",
                ", ".join(t.strip() for t in top[vectors.emotions.index(e)][:6]),
                tokens,
            )
    result.compare("emotions whose top-20 tokens contain their own word's stem", f"{rate:.0%}")
    result.summary = (
        f"Layer {layer} vectors through the final norm's gain and the unembedding: for "
        f"{rate:.0%} of the {len(vectors.emotions)} emotions the 20 most promoted tokens include "
        "the emotion word's own stem."
    )
    return result
