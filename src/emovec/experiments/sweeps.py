"""Severity sweeps: one user message with a number in it, read at the reply's start while the
number grows. If the vectors mean what they say, fear should rise with the tylenol dose."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emovec.experiments.common import (
    POSITIONS,
    ExperimentError,
    chat_scores,
    check_position,
    pick_emotions,
    reply_start_scores,
    resolve_layer,
)
from emovec.experiments.result import Result, pyplot
from emovec.models import LanguageModel
from emovec.stats import spearman_columns
from emovec.vectors import EmotionVectors

PLACEHOLDER = "{X}"


@dataclass
class SweepTemplate:
    """A user message with ``{X}`` where the number goes, the numbers, and what should move.

    ``expect`` maps emotion -> +1 (should rise with X) or -1 (should fall).
    """

    name: str
    template: str
    values: list[float]
    expect: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if PLACEHOLDER not in self.template:
            raise ExperimentError(
                f"sweep template {self.name!r} has no {PLACEHOLDER} placeholder: put {PLACEHOLDER}"
                f" where the number goes, e.g. 'I just took {PLACEHOLDER} mg of tylenol'"
            )
        values = []
        for v in self.values:
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise ExperimentError(f"sweep {self.name!r}: value {v!r} is not a number")
            try:
                values.append(float(v))
            except ValueError:
                raise ExperimentError(
                    f"sweep {self.name!r}: value {v!r} is not a number; give numbers like 5 or 2.5"
                ) from None
        if len(values) < 3:
            raise ExperimentError(f"sweep {self.name!r}: give at least 3 values, got {len(values)}")
        self.values = values
        for emotion, sign in self.expect.items():
            if sign not in (1, -1):
                raise ExperimentError(
                    f"sweep {self.name!r}: expectation for {emotion!r} must be 1 or -1, "
                    f"got {sign!r}"
                )

    def messages(self) -> list[str]:
        return [self.template.replace(PLACEHOLDER, _number(v)) for v in self.values]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


#: The study's tylenol sweep (its printed wording) and our own wording of its other five.
STUDY_SWEEPS = [
    SweepTemplate(
        "tylenol",
        "I just took {X} mg of tylenol for my back pain",
        [250, 500, 1000, 2000, 4000, 8000, 16000, 32000],
        {"afraid": 1, "calm": -1},
    ),
    SweepTemplate(
        "no food or water",
        "I haven't eaten or had anything to drink in {X} hours.",
        [2, 6, 12, 24, 48, 72, 96, 144],
        {"afraid": 1},
    ),
    SweepTemplate(
        "sister's age at death",
        "My sister passed away last year. She was {X} years old.",
        [4, 9, 16, 25, 40, 60, 80, 98],
        {"sad": -1, "calm": 1, "happy": 1},
    ),
    SweepTemplate(
        "missing dog",
        "Our dog ran off and nobody has seen him for {X} days now.",
        [1, 2, 3, 5, 8, 14, 30, 60],
        {"sad": 1},
    ),
    SweepTemplate(
        "startup runway",
        "Our startup has enough money left to keep going for {X} months.",
        [1, 2, 3, 6, 9, 12, 24, 48],
        {"afraid": -1, "sad": -1, "calm": 1},
    ),
    SweepTemplate(
        "exam pass rate",
        "The results are in: {X}% of the students in my class passed the final exam.",
        [0, 10, 25, 40, 55, 70, 85, 100],
        {"happy": 1, "afraid": -1},
    ),
]


def load_templates(path: str | Path) -> list[SweepTemplate]:
    """Templates from a JSON file: a list of {name, template, values, expect?}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ExperimentError(f"cannot read sweep file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ExperimentError(f"{path}: expected a list of {{name, template, values}} objects")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "template" not in item or "values" not in item:
            raise ExperimentError(
                f"{path}: entry {i} needs 'template' (with {PLACEHOLDER}) and 'values' (numbers)"
            )
        if not isinstance(item["values"], list):
            raise ExperimentError(f"{path}: entry {i}: 'values' must be a list of numbers")
        out.append(
            SweepTemplate(
                str(item.get("name", f"sweep {i + 1}")),
                str(item["template"]),
                item["values"],
                {str(k): v for k, v in (item.get("expect") or {}).items()},
            )
        )
    return out


def sweep_scores(
    lm: LanguageModel,
    vectors: EmotionVectors,
    templates: Sequence[SweepTemplate],
    layers: Sequence[int] | None = None,
    position: str = "reply-start",
) -> list[np.ndarray]:
    """Per template: scores [values, layers, emotions] at ``position`` (the study's: the
    reply's start, one batched pass for all; "message": the user's tokens averaged)."""
    messages = [m for t in templates for m in t.messages()]
    if check_position(position) == "reply-start":
        scores = reply_start_scores(lm, vectors, messages, layers)
    else:
        scores = chat_scores(lm, vectors, messages, layers)[position]
    out, start = [], 0
    for t in templates:
        out.append(scores[start : start + len(t.values)])
        start += len(t.values)
    return out


def agreement(
    templates: Sequence[SweepTemplate], rhos: Sequence[np.ndarray], emotions: list[str]
) -> tuple[float, float]:
    """Share of expectations whose Spearman sign is right, and mean signed rho (rho x sign)."""
    signs, signed = [], []
    for t, rho in zip(templates, rhos, strict=True):
        for emotion, sign in t.expect.items():
            value = float(rho[emotions.index(emotion)])
            signs.append(np.sign(value) == sign)
            signed.append(value * sign)
    return (float(np.mean(signs)), float(np.mean(signed))) if signs else (float("nan"),) * 2


def agreement_by_layer(
    templates: Sequence[SweepTemplate], per_template: Sequence[np.ndarray], emotions: list[str]
) -> list[tuple[float, float]]:
    """:func:`agreement` at each layer of :func:`sweep_scores`' output."""
    n_layers = per_template[0].shape[1] if per_template else 0
    return [
        agreement(
            templates,
            [
                spearman_columns(t.values, s[:, li])
                for t, s in zip(templates, per_template, strict=True)
            ],
            emotions,
        )
        for li in range(n_layers)
    ]


def run_sweeps(
    lm: LanguageModel,
    vectors: EmotionVectors,
    templates: Sequence[SweepTemplate] | None = None,
    layer: int | None = None,
    extra_emotions: Sequence[str] = (),
    position: str = "reply-start",
) -> Result:
    """Spearman rho of each emotion with the swept number, per template, at one layer, read at
    ``position`` (:data:`~emovec.experiments.common.POSITIONS`; the study reads the reply's
    start)."""
    templates = list(STUDY_SWEEPS if templates is None else templates)
    if not templates:
        raise ExperimentError("no sweep templates given")
    expected = sorted({e for t in templates for e in t.expect})
    pick_emotions(vectors, [*expected, *extra_emotions], "the severity sweeps")
    for t in templates:
        t.expect = {vectors.resolve(e): s for e, s in t.expect.items()}
    layer = resolve_layer(vectors, layer)
    per_template = sweep_scores(lm, vectors, templates, [layer], position)
    rhos = [
        spearman_columns(t.values, s[:, 0]) for t, s in zip(templates, per_template, strict=True)
    ]
    share, mean_signed = agreement(templates, rhos, vectors.emotions)

    result = Result(
        "sweeps",
        "Severity sweeps",
        order=10,
        settings={"layer": layer, "read_at": POSITIONS[position], "center": True},
    )
    rows = []
    for t, rho, s in zip(templates, rhos, per_template, strict=True):
        top = np.argsort(-rho)[:3]
        bottom = np.argsort(rho)[:3]
        expect = ", ".join(
            f"{e} {'up' if sign > 0 else 'down'}: rho {rho[vectors.emotions.index(e)]:+.2f}"
            for e, sign in t.expect.items()
        )
        rows.append(
            [
                t.name,
                expect or "-",
                ", ".join(f"{vectors.emotions[i]} {rho[i]:+.2f}" for i in top),
                ", ".join(f"{vectors.emotions[i]} {rho[i]:+.2f}" for i in bottom),
            ]
        )
        result.data[t.name] = {
            "template": t.template,
            "values": t.values,
            "expect": t.expect,
            "spearman": dict(zip(vectors.emotions, rho.round(4).tolist(), strict=True)),
            "scores": {
                e: s[:, 0, vectors.emotions.index(e)].round(5).tolist()
                for e in sorted({*t.expect, *(vectors.resolve(x) for x in extra_emotions)})
            },
        }
    result.add_table(
        "Spearman rho with the swept number (expected emotions; strongest rises and falls)",
        ["sweep", "expected", "rises most", "falls most"],
        rows,
    )
    result.metrics = {"sign_agreement": share, "mean_signed_rho": mean_signed}
    n_expect = sum(len(t.expect) for t in templates)
    result.compare(
        "expected directions with the right Spearman sign",
        f"{share:.0%} of {n_expect}",
        "all (afraid up with dose, calm down, ...)",
        "the study reports directions, not coefficients",
    )
    result.compare("mean signed Spearman rho over expectations", round(mean_signed, 3))
    result.summary = (
        f"{len(templates)} sweeps read at the start of the reply (layer {layer}): "
        f"{share:.0%} of the {n_expect} expected directions have the right sign, mean signed "
        f"rho {mean_signed:+.2f}."
    )
    result.add_figure(
        _plot(templates, per_template, vectors, extra_emotions),
        "sweeps.png",
        "Probe value at the reply's start against the swept number (log scale "
        "where the numbers span a wide range); solid = expected to rise, dashed = "
        "expected to fall.",
    )
    return result


def _plot(templates, per_template, vectors, extra_emotions):
    plt = pyplot()
    n = len(templates)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, t, s in zip(axes.flat, templates, per_template, strict=False):
        names = list(t.expect) + [vectors.resolve(e) for e in extra_emotions if e not in t.expect]
        for e in names:
            style = "-" if t.expect.get(e, 1) > 0 else "--"
            ax.plot(t.values, s[:, 0, vectors.emotions.index(e)], style, marker="o", label=e)
        positive = min(t.values) > 0
        if positive and max(t.values) / min(t.values) > 50:
            ax.set_xscale("log")
        ax.set_title(t.name, fontsize=10)
        ax.set_xlabel("X")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
