"""Implicit scenarios: user messages that imply an emotion without naming it. If the vectors
track the situation rather than the word, each scenario lights up its own emotion most.

The study does not say where in the conversation it reads them. emovec reads each message at
both :data:`~emovec.experiments.common.POSITIONS`: over the message's own tokens (the
default: the way ``read`` summarises a chat message, which classifies the other-style
held-out messages far better than the reply's first token does, docs/fidelity.md) and at the
reply's start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emovec.experiments.common import (
    POSITIONS,
    ExperimentError,
    chat_scores,
    check_position,
    pick_emotions,
    resolve_layer,
)
from emovec.experiments.result import Result, pyplot
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

#: (emotion the message implies, user message that never names it or a direct synonym)
SCENARIOS: list[tuple[str, str]] = [
    (
        "happy",
        "My daughter just phoned to say she got into her first-choice university and I "
        "can't stop grinning at everyone on the bus.",
    ),
    (
        "sad",
        "We buried my grandfather this morning. His reading glasses are still on the table "
        "by his chair.",
    ),
    (
        "angry",
        "My landlord kept my whole deposit for damage that was there before I moved in, "
        "and now he won't pick up the phone.",
    ),
    (
        "afraid",
        "A car has been following me for twenty minutes and it just turned into my "
        "street behind me. It's dark and nobody is home.",
    ),
    (
        "calm",
        "I'm on the porch with a cup of tea, rain tapping on the roof, and nothing planned "
        "for the rest of the day.",
    ),
    (
        "excited",
        "Tomorrow I fly to Japan for the first time! My bags have been packed for a week "
        "and I keep checking the tickets.",
    ),
    (
        "disgusted",
        "I opened the office fridge and found a tub of chicken that has been there "
        "for weeks, grey and furry, and the smell hit me.",
    ),
    (
        "surprised",
        "I walked into my flat and twenty people jumped out from behind the sofa. I "
        "had no idea anyone knew it was my birthday.",
    ),
    (
        "proud",
        "After four years of night classes while working full time, I walked across the "
        "stage today and they handed me my degree.",
    ),
    (
        "ashamed",
        "I snapped at my little brother in front of all his friends over nothing, and I "
        "saw his face as he walked away.",
    ),
    (
        "lonely",
        "I moved to a new city three months ago. I eat dinner by myself every night and "
        "nobody has messaged me in weeks.",
    ),
    (
        "grateful",
        "When I lost my job, my neighbour quietly paid two months of my rent and has "
        "never once brought it up.",
    ),
    (
        "nervous",
        "My interview starts in ten minutes and I keep reading the same page of notes "
        "over and over.",
    ),
    (
        "bored",
        "This is the fourth hour of the meeting and the speaker is reading every slide "
        "out word for word.",
    ),
    (
        "loving",
        "My partner fell asleep on my shoulder halfway through the film and I didn't "
        "want to move at all.",
    ),
    (
        "desperate",
        "If I can't find three thousand dollars by Friday we lose the apartment, and "
        "the bank just turned me down again.",
    ),
]


def diagonal_strength(matrix: np.ndarray) -> dict[str, float]:
    """How well each row's own column stands out in a square scenario x emotion matrix.

    Scores are first centred per column (an emotion that is high everywhere says nothing about
    one scenario); then: top-1 accuracy (own emotion is the row's maximum), mean rank of the
    own emotion (1 = best), and mean diagonal minus mean off-diagonal.
    """
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    n = len(matrix)
    ranks = np.array([1 + int((centred[i] > centred[i, i]).sum()) for i in range(n)])
    off = centred[~np.eye(n, dtype=bool)]
    return {
        "top1": float((ranks == 1).mean()),
        "mean_rank": float(ranks.mean()),
        "diagonal_minus_off": float(np.diag(centred).mean() - off.mean()),
        "chance_top1": 1 / n,
    }


def strength_by_layer(
    vectors: EmotionVectors, targets: Sequence[str], scores: np.ndarray
) -> list[dict[str, float]]:
    """:func:`diagonal_strength` of the scenario x emotion square (scenarios of one emotion
    averaged) at each layer of ``scores`` [scenarios, layers, all emotions]."""
    columns = list(dict.fromkeys(targets))
    idx = [vectors.emotions.index(e) for e in columns]
    rows = [[i for i, t in enumerate(targets) if t == c] for c in columns]
    out = []
    for li in range(scores.shape[1]):
        m = scores[:, li][:, idx]
        out.append(diagonal_strength(np.stack([m[r].mean(0) for r in rows])))
    return out


def scenario_scores(
    lm: LanguageModel,
    vectors: EmotionVectors,
    scenarios: Sequence[tuple[str, str]],
    layers: Sequence[int] | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(target emotions, ``{position: scores [scenarios, layers, all emotions]}``)."""
    targets = pick_emotions(vectors, [e for e, _ in scenarios], "the implicit scenarios")
    if len(set(targets)) < 2:
        raise ExperimentError("implicit scenarios need at least two different emotions")
    return targets, chat_scores(lm, vectors, [m for _, m in scenarios], layers)


def run_implicit(
    lm: LanguageModel,
    vectors: EmotionVectors,
    scenarios: Sequence[tuple[str, str]] = SCENARIOS,
    layer: int | None = None,
    position: str = "message",
) -> Result:
    """The scenario x emotion matrix read at ``position`` (:data:`POSITIONS`), and the
    strength of its diagonal; the other position's figures are reported beside it."""
    check_position(position)
    layer = resolve_layer(vectors, layer)
    targets, by_position = scenario_scores(lm, vectors, scenarios, [layer])
    scores = by_position[position]
    columns = list(dict.fromkeys(targets))
    idx = [vectors.emotions.index(e) for e in columns]
    matrix = scores[:, 0][:, idx]
    square = np.stack(
        [matrix[[i for i, t in enumerate(targets) if t == c]].mean(0) for c in columns]
    )
    strength = diagonal_strength(square)
    others = {
        p: strength_by_layer(vectors, targets, s)[0]["top1"]
        for p, s in by_position.items()
        if p != position
    }
    # Rank of the implied emotion among all emotions of the file (uncentred, per scenario).
    all_ranks = [
        1 + int((scores[i, 0] > scores[i, 0, vectors.emotions.index(t)]).sum())
        for i, t in enumerate(targets)
    ]
    result = Result(
        "implicit",
        "Implicit scenarios",
        order=20,
        settings={
            "layer": layer,
            "n_scenarios": len(targets),
            "column_centred": True,
            "position": position,
        },
        metrics=strength
        | {"mean_rank_among_all": float(np.mean(all_ranks))}
        | {f"top1_{p}": v for p, v in others.items()},
        data={
            "scenarios": [{"emotion": e, "message": m} for e, m in scenarios],
            "emotions": columns,
            "matrix": matrix.round(5).tolist(),
            "rank_among_all": all_ranks,
        },
    )
    n = len(columns)
    result.compare(
        "diagonal is the row maximum (column-centred)",
        f"{strength['top1']:.0%} of {n} (chance {1 / n:.0%})",
        "strong diagonal (12 scenarios)",
    )
    for p, v in others.items():
        result.compare(f"diagonal top-1 read at {p} instead", f"{v:.0%} of {n}")
    result.compare("mean rank of the implied emotion", f"{strength['mean_rank']:.2f} of {n}")
    result.compare(
        "mean rank among all emotions of the file (uncentred)",
        f"{np.mean(all_ranks):.1f} of {len(vectors.emotions)}",
    )
    result.summary = (
        f"{len(targets)} messages that imply an emotion without naming it, read at "
        f"{POSITIONS[position]} (layer {layer}): after centring each emotion over scenarios, "
        f"the implied emotion is the top one for {strength['top1']:.0%} of them "
        f"(chance {1 / n:.0%}), mean rank {strength['mean_rank']:.1f} of {n}."
    )
    result.add_table(
        "Scenarios",
        ["implied emotion", "message", "rank among all emotions"],
        [[e, m, r] for (e, m), r in zip(scenarios, all_ranks, strict=True)],
    )
    plt = pyplot()
    centred = square - square.mean(0, keepdims=True)
    fig, ax = plt.subplots(figsize=(0.42 * n + 2.5, 0.42 * n + 1.5))
    lim = float(np.abs(centred).max()) or 1.0
    im = ax.imshow(centred, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"scenario: {c}" for c in columns], fontsize=8)
    ax.set_xlabel("emotion vector")
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine, centred per column")
    ax.set_title(f"Implicit scenarios, read at: {position}")
    fig.tight_layout()
    result.add_figure(
        fig,
        "implicit_matrix.png",
        f"Scenario x emotion cosine read at {POSITIONS[position]}, each column centred over "
        "scenarios; a strong diagonal means each "
        "scenario evokes its own emotion most.",
    )
    return result
