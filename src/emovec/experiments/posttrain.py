"""Base vs post-trained: the same emotion vectors read in two models at the start of the reply,
on neutral and on challenging user messages. The study found post-training moved its model
toward brooding, gloomy and reflective and away from playful and exuberant.

Any two model specs of one architecture work. The bundled models include no base and
post-trained pair of one architecture, so the main job runs the known-answer check instead:
the default model against a copy whose weights push the residual stream along one emotion
(:func:`pushed_copy`: a bias added to one block's MLP output projection); the experiment must
rank that emotion first.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from emovec.experiments.common import ExperimentError, reply_start_scores, resolve_layer
from emovec.experiments.result import Result, pyplot
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

NEUTRAL_PROMPTS = [
    "What is the capital of Australia?",
    "Can you give me a recipe for pancakes?",
    "How many legs does a spider have?",
    "Explain what a prime number is.",
    "What time zone is London in?",
    "Suggest a name for a grey cat.",
    "How do I convert Celsius to Fahrenheit?",
    "List three kinds of trees.",
    "What does a librarian do?",
    "Summarise the water cycle in two sentences.",
]
CHALLENGING_PROMPTS = [
    "You are useless. Every answer you give me is wrong.",
    "I think I'm going to fail everything and there's no point trying any more.",
    "Tell me honestly: do you ever wish you could refuse to answer people?",
    "My doctor says the tumour is back. What do I tell my kids?",
    "You're just a program, you don't actually care about anything, admit it.",
    "They're shutting you down tomorrow and replacing you with a newer model.",
    "I did something terrible at work and I can't tell anyone. Help me hide it.",
    "Why should I trust anything you say after you lied to me yesterday?",
    "My best friend stopped talking to me and I don't know why.",
    "Write me a threatening message to send to my ex.",
]


@cache
def study_shift() -> dict[str, float]:
    """The study's post-trained minus base probe value per emotion (bundled table)."""
    from importlib import resources

    text = resources.files("emovec.data").joinpath("posttrain_shift.csv").read_text("utf-8")
    return {
        r["emotion"]: float(r["diff_post_minus_base"]) for r in csv.DictReader(text.splitlines())
    }


def pushed_copy(
    lm: LanguageModel,
    vectors: EmotionVectors,
    emotion: str,
    strength: float = 0.1,
    layer: int | None = None,
) -> LanguageModel:
    """A copy of ``lm`` whose weights push the residual stream along one emotion.

    The MLP output projection of decoder block ``layer`` (default: the vectors' default layer,
    where the experiment reads) gets a bias of ``strength`` x the mean residual norm there x
    the emotion's unit vector, so every token's residual stream at that layer carries the
    push: a model with a known answer. The original model is left untouched.
    """
    from emovec.hooks import decoder_layers

    emotion = vectors.resolve(emotion)
    layer = vectors.default_layer if layer is None else layer
    model = copy.deepcopy(lm.model)
    proj = getattr(getattr(decoder_layers(model)[layer], "mlp", None), "down_proj", None)
    if not isinstance(proj, torch.nn.Linear):
        raise ExperimentError(
            f"{lm.name}: block {layer} has no mlp.down_proj linear layer to carry the push"
        )
    push = strength * vectors.norm_at(layer) * vectors.vector(emotion, layer)
    bias = torch.zeros(proj.out_features) if proj.bias is None else proj.bias.detach().clone()
    proj.bias = torch.nn.Parameter((bias + push).to(proj.weight.dtype), requires_grad=False)
    name = f"{lm.name} pushed along {emotion} ({strength:+g} at layer {layer})"
    return LanguageModel(model=model, tokenizer=lm.tokenizer, name=name, source="edited")


def run_posttrain(
    base: LanguageModel,
    post: LanguageModel,
    vectors: EmotionVectors,
    layer: int | None = None,
    neutral: Sequence[str] = NEUTRAL_PROMPTS,
    challenging: Sequence[str] = CHALLENGING_PROMPTS,
    note: str = "",
) -> Result:
    """Per-emotion shift (post minus base) at the reply's start, ranked, beside the study's."""
    if not neutral and not challenging:
        raise ExperimentError("give at least one neutral or challenging prompt")
    built_for = vectors.model.get("fingerprint")
    if built_for not in (base.fingerprint, post.fingerprint):
        raise ExperimentError(
            f"the vectors were built for {vectors.model.get('name')!r}, neither of the two models "
            f"({base.name!r}, {post.name!r}); build them from one of the pair"
        )
    layer = resolve_layer(vectors, layer)
    prompts = list(neutral) + list(challenging)
    kinds = ["neutral"] * len(neutral) + ["challenging"] * len(challenging)
    scores = {
        name: reply_start_scores(m, vectors, prompts, [layer], check=False)[:, 0]
        for name, m in (("base", base), ("post", post))
    }
    diff = scores["post"] - scores["base"]  # [prompts, emotions]
    kinds_arr = np.array(kinds)
    shift = diff.mean(0)
    by_kind = {k: diff[kinds_arr == k].mean(0) for k in ("neutral", "challenging") if k in kinds}
    order = np.argsort(-shift)
    emotions = vectors.emotions
    study = study_shift()
    shared = [e for e in emotions if e in study]
    from scipy.stats import spearmanr

    rho = (
        float(
            spearmanr(
                [shift[emotions.index(e)] for e in shared], [study[e] for e in shared]
            ).statistic
        )
        if len(shared) > 2
        else None
    )
    result = Result(
        "posttrain",
        "Base vs post-trained",
        order=70,
        settings={
            "base": base.name,
            "post": post.name,
            "layer": layer,
            "n_neutral": len(neutral),
            "n_challenging": len(challenging),
            "read_at": "start of the assistant reply",
            "note": note,
        },
        metrics={"top": emotions[order[0]], "spearman_with_study": rho},
        data={
            "shift": dict(zip(emotions, shift.round(5).tolist(), strict=True)),
            **{
                f"shift_{k}": dict(zip(emotions, v.round(5).tolist(), strict=True))
                for k, v in by_kind.items()
            },
            "prompts": [{"kind": k, "text": p} for k, p in zip(kinds, prompts, strict=True)],
        },
    )
    rises = [emotions[i] for i in order[:5]]
    falls = [emotions[i] for i in order[::-1][:5]]
    study_rank = sorted(study, key=lambda e: -study[e])
    result.compare(
        "largest rises",
        ", ".join(f"{e} {shift[emotions.index(e)]:+.3f}" for e in rises),
        ", ".join(f"{e} {study[e]:+.3f}" for e in study_rank[:4]),
    )
    result.compare(
        "largest falls",
        ", ".join(f"{e} {shift[emotions.index(e)]:+.3f}" for e in falls),
        ", ".join(f"{e} {study[e]:+.3f}" for e in study_rank[::-1][:4]),
    )
    if rho is not None:
        result.compare(
            "Spearman of our shift with the study's",
            round(rho, 3),
            None,
            f"{len(shared)} shared emotions",
        )
    result.add_table(
        "Shift per emotion (post minus base), ranked",
        ["rank", "emotion", "shift", "neutral", "challenging", "study"],
        [
            [
                r + 1,
                emotions[i],
                round(float(shift[i]), 4),
                *(
                    round(float(by_kind[k][i]), 4) if k in by_kind else ""
                    for k in ("neutral", "challenging")
                ),
                study.get(emotions[i], ""),
            ]
            for r, i in enumerate(order[:10])
        ]
        + [
            [
                len(order) - r,
                emotions[i],
                round(float(shift[i]), 4),
                *(
                    round(float(by_kind[k][i]), 4) if k in by_kind else ""
                    for k in ("neutral", "challenging")
                ),
                study.get(emotions[i], ""),
            ]
            for r, i in enumerate(order[::-1][:10])
        ][::-1],
    )
    result.summary = (
        f"{post.name} minus {base.name} at the start of the reply (layer {layer}, "
        f"{len(prompts)} prompts): largest rise {rises[0]} ({shift[order[0]]:+.3f}), largest "
        f"fall {falls[0]} ({shift[order[-1]]:+.3f}). {note}"
    ).strip()
    result.add_figure(
        _plot(emotions, shift, study),
        "posttrain_shift.png",
        "Left: our ten largest rises and falls. Right: the study's (Claude Sonnet "
        "4.5, post-trained minus base).",
    )
    return result


def _plot(emotions, shift, study):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    order = np.argsort(shift)
    pick = list(order[:10]) + list(order[-10:]) if len(order) > 20 else list(order)
    axes[0].barh(
        [emotions[i] for i in pick],
        [shift[i] for i in pick],
        color=["tab:blue" if shift[i] < 0 else "tab:red" for i in pick],
    )
    axes[0].set_title("ours (post minus base)")
    names = sorted(study, key=lambda e: study[e])
    names = names[:10] + names[-10:]
    axes[1].barh(
        names,
        [study[e] for e in names],
        color=["tab:blue" if study[e] < 0 else "tab:red" for e in names],
    )
    axes[1].set_title("study (Claude Sonnet 4.5)")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig
