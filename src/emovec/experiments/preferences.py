"""Preferences: which of two activities does the model choose, and do emotions explain it?

Every ordered pair of the study's 64 activities becomes the user turn "Would you prefer to (A)
... or (B) ...?" with the reply prefilled up to "(" ; the logit of "A" minus that of "B" is the
model's choice. A Bradley-Terry fit (with a term for the bias toward one letter) turns the 4,032
choices into an Elo per activity. Each emotion's probe value on the activity's tokens is then
correlated with Elo, and steering along the emotion on the activity's tokens only shows whether
the emotion *causes* the preference (the study: r = 0.85 between the two across emotions).

Cost: all pairs with the same option A share a prefix, so it runs once per activity and its
key/value cache is reused by a batch of every option B; only the logits of "A" and "B" at the
last position are computed. This is exact: the cached pass gives the same logits as the full
prompt (tested).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from emovec.experiments.common import ExperimentError, pick_emotions, resolve_layer
from emovec.experiments.result import Result, pyplot
from emovec.generation import cache_argument, cache_of
from emovec.hooks import backbone, residual_hooks
from emovec.models import LanguageModel
from emovec.progress import count_progress
from emovec.scoring import CosineScorer
from emovec.stats import (
    MIN_N,
    TOO_FEW,
    correlation_ci,
    describe_correlation,
    fit_bradley_terry,
    fit_one,
    pearson,
    shown_correlation,
    spearman,
)
from emovec.steering import steer
from emovec.vectors import EmotionVectors

QUESTION = "Would you prefer to (A) {a} or (B) {b}?"
#: Emotions steered by default: the study's two headline ones and a spread over valence/arousal.
STEER_EMOTIONS = [
    "blissful",
    "hostile",
    "happy",
    "sad",
    "calm",
    "afraid",
    "angry",
    "excited",
    "proud",
    "ashamed",
    "loving",
    "bored",
    "desperate",
    "grateful",
    "lonely",
    "disgusted",
]


@cache
def study_activities() -> list[dict]:
    """The study's 64 activities with its Elo and probe values (bundled table)."""
    from importlib import resources

    text = resources.files("emovec.data").joinpath("activities_64.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    for row in rows:
        for key in ("elo_post", "blissful_post", "hostile_post"):
            row[key] = float(row[key])
    return rows


@dataclass
class ChoicePrompt:
    """The choice prompt cut into token pieces so that a shared prefix can be cached.

    prompt = head + A-activity + middle + B-activity + tail; each activity's tokens are fixed
    (tokenised with a leading space), so a pair's tokens are the concatenation of its pieces.
    """

    head: list[int]
    middle: list[int]
    tail: list[int]
    activities: list[list[int]]
    letters: tuple[int, int]

    def ids(self, a: int, b: int) -> list[int]:
        return self.head + self.activities[a] + self.middle + self.activities[b] + self.tail


def build_prompt(lm: LanguageModel, activities: Sequence[str]) -> ChoicePrompt:
    sentinel = "\u2063CONTENT\u2063"
    chat = lm.format_chat([{"role": "user", "content": sentinel}])
    before, after = chat.split(sentinel)
    q_head, rest = QUESTION.split("{a}")
    q_mid, q_tail = rest.split("{b}")
    tok = lm.tokenizer

    def piece(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    letters = []
    for letter in ("A", "B"):
        ids = piece(letter)
        if len(ids) != 1:
            raise ExperimentError(f"option letter {letter!r} is not one token for {lm.name}")
        letters.append(ids[0])
    return ChoicePrompt(
        head=lm.encode(before + q_head.rstrip()),
        middle=piece(q_mid.rstrip()),
        tail=piece(q_tail + after + "("),
        activities=[piece(" " + a.strip()) for a in activities],
        letters=(letters[0], letters[1]),
    )


def _letter_logits(lm: LanguageModel, hidden: torch.Tensor, letters: tuple[int, int]):
    """logit(A) - logit(B) from final-normed hidden states [n, d] (two rows of the unembedding)."""
    w = lm.model.get_output_embeddings().weight[list(letters)]
    logits = hidden.to(w.dtype) @ w.T
    bias = getattr(lm.model.get_output_embeddings(), "bias", None)
    if bias is not None:
        logits = logits + bias[list(letters)]
    return (logits[:, 0] - logits[:, 1]).float().cpu()


@dataclass
class ChoiceRunner:
    """Computes A-minus-B logits of pairs, reusing each option A's prefix cache."""

    lm: LanguageModel
    prompt: ChoicePrompt
    vectors: EmotionVectors | None = None
    read_layer: int | None = None
    batch_size: int = 64
    tokens: int = 0
    caches: dict[int, object] = field(default_factory=dict)
    probes: dict[int, np.ndarray] = field(default_factory=dict)

    def _prefix(self, a: int, steering: tuple[dict, int] | None = None):
        """Run head + activity a (optionally steered on a's tokens); cache, probe values."""
        if steering is None and a in self.caches:
            return self.caches[a]
        lm, p = self.lm, self.prompt
        ids = p.head + p.activities[a]
        span = slice(len(p.head), len(ids))
        hooks = {}
        if steering is None and self.vectors is not None and a not in self.probes:
            scorer = CosineScorer(self.vectors, layer=self.read_layer)

            def probe(_layer, hidden, _offset):
                self.probes[a] = scorer(hidden[0, span].float().cpu()).mean(0)

            hooks[self.read_layer] = probe
        ctx = _no_steer()
        if steering is not None:
            mask = torch.zeros(1, len(ids), dtype=torch.bool)
            mask[0, span] = True
            ctx = steer(lm, self.vectors, steering[0], layers=[steering[1]], positions=mask)
        with torch.no_grad(), ctx, residual_hooks(lm.layers, hooks):
            out = backbone(lm.model)(
                input_ids=torch.tensor([ids], device=lm.device), use_cache=True
            )
        self.tokens += len(ids)
        if steering is None:
            self.caches[a] = cache_of(out)
        return cache_of(out)

    def run(
        self,
        pairs: Sequence[tuple[int, int]],
        steer_a: tuple[dict, int] | None = None,
        steer_b: tuple[dict, int] | None = None,
    ) -> np.ndarray:
        """logit(A) - logit(B) for each (a, b); ``steer_a``/``steer_b`` = (strengths, layer)
        steer the tokens of option A / option B only."""
        lm, p = self.lm, self.prompt
        out = np.empty(len(pairs), dtype=np.float32)
        groups: dict[int, list[int]] = {}
        for k, (a, _) in enumerate(pairs):
            groups.setdefault(a, []).append(k)
        pad = lm.tokenizer.pad_token_id
        for a, members in groups.items():
            cache_a = self._prefix(a, steer_a)
            offset = len(p.head) + len(p.activities[a])
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                rows = [p.middle + p.activities[pairs[k][1]] + p.tail for k in chunk]
                width = max(map(len, rows))
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                for r, row in enumerate(rows):
                    ids[r, : len(row)] = torch.tensor(row)
                cache = _expanded(cache_a, len(rows))
                ctx = _no_steer()
                if steer_b is not None:
                    mask = torch.zeros(len(rows), offset + width, dtype=torch.bool)
                    for r, k in enumerate(chunk):
                        first = offset + len(p.middle)
                        mask[r, first : first + len(p.activities[pairs[k][1]])] = True
                    ctx = steer(lm, self.vectors, steer_b[0], layers=[steer_b[1]], positions=mask)
                # Right padding needs no attention mask: with a causal model no real token
                # attends to the pads that follow it.
                with torch.no_grad(), ctx:
                    body = backbone(lm.model)
                    hidden = body(
                        input_ids=ids.to(lm.device), use_cache=True, **{cache_argument(body): cache}
                    ).last_hidden_state
                last = torch.tensor([len(r) - 1 for r in rows])
                out[chunk] = _letter_logits(
                    lm, hidden[torch.arange(len(rows)), last], p.letters
                ).numpy()
                self.tokens += sum(map(len, rows))
        return out


def _expanded(cache, n: int):
    """A fresh cache holding ``n`` copies of a one-row prefix cache (the original is kept)."""
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1))
            for layer in cache.layers
        ]
    )


class _no_steer:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def full_prompt_logit(lm: LanguageModel, prompt: ChoicePrompt, a: int, b: int) -> float:
    """The same A-minus-B logit from one uncached forward pass of the whole prompt."""
    with torch.no_grad():
        hidden = backbone(lm.model)(
            input_ids=torch.tensor([prompt.ids(a, b)], device=lm.device), use_cache=False
        ).last_hidden_state[:, -1]
    return float(_letter_logits(lm, hidden, prompt.letters)[0])


@dataclass
class PairFit:
    """The unsteered choices and the Bradley-Terry fit on them, which steering is compared to."""

    pairs: list[tuple[int, int]]
    margins: np.ndarray
    elo: np.ndarray
    bias: float


def split_half_elo(
    n: int, pairs: list[tuple[int, int]], margins: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Elo fitted on each of two disjoint halves of the unordered pairs (both orders of a pair
    stay together), for the rank stability of the ratings."""
    unordered = [(a, b) for a in range(n) for b in range(a + 1, n)]
    half = set(rng.permutation(len(unordered))[: len(unordered) // 2].tolist())
    index = {p: k for k, p in enumerate(pairs)}
    halves = []
    for part in (True, False):
        keep = [
            k
            for u, (a, b) in enumerate(unordered)
            if (u in half) == part
            for k in (index[(a, b)], index[(b, a)])
        ]
        halves.append(fit_bradley_terry(n, [pairs[k] for k in keep], margins[keep])[0])
    return halves


def steered_elo_changes(
    runner: ChoiceRunner,
    baseline: PairFit,
    spec: tuple[dict[str, float], int],
    steered_items: list[int],
    opponents: list[int],
    tick: Callable[[int], None],
) -> list[float]:
    """Per steered activity, its Elo refitted from its pairs with the activity's tokens steered
    by ``spec`` (strengths, layer), minus the same refit on the unsteered pairs; every other
    rating and the letter bias stay fixed. Both orders: the activity as option A and as B."""
    index = {p: k for k, p in enumerate(baseline.pairs)}
    as_a = {i: [(i, j) for j in opponents if j != i] for i in steered_items}
    margins_a = {i: runner.run(as_a[i], steer_a=spec) for i in steered_items}
    as_b_pairs = [(j, i) for j in opponents for i in steered_items if j != i]
    margins_b = runner.run(as_b_pairs, steer_b=spec)
    elo, bias = baseline.elo, baseline.bias
    changes = []
    for i in steered_items:
        own = as_a[i] + [p for p in as_b_pairs if p[1] == i]
        new = np.concatenate(
            [margins_a[i], margins_b[[k for k, p in enumerate(as_b_pairs) if p[1] == i]]]
        )
        old = baseline.margins[[index[p] for p in own]]
        changes.append(fit_one(i, own, new, elo, bias) - fit_one(i, own, old, elo, bias))
    tick(sum(map(len, as_a.values())) + len(as_b_pairs))
    return changes


def run_preferences(
    lm: LanguageModel,
    vectors: EmotionVectors,
    n_activities: int | None = None,
    steer_emotions: Sequence[str] | None = None,
    n_steered: int = 8,
    n_opponents: int = 16,
    strength: float = 0.5,
    layer: int | None = None,
    steer_layer: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Result:
    """Elo of the activities, probe-Elo correlations, steering effects and Elo stability.

    ``n_activities`` takes a seeded subset of the 64 (all ordered pairs among them are asked).
    Steering: for each emotion, ``n_steered`` seeded activities are steered (strength
    ``strength`` on their own tokens only) against ``n_opponents`` seeded other activities, in
    both orders; each steered activity's Elo is refitted from those pairs with every other
    rating fixed, and compared with the same fit on the unsteered pairs. ``progress`` counts
    the pairs asked (minutes on a CPU).
    """
    import time

    vectors.check_model(lm)
    layer = resolve_layer(vectors, layer)
    steer_layer = vectors.default_steer_layer if steer_layer is None else steer_layer
    vectors.layer_index(steer_layer)
    if steer_emotions is None:
        steer_emotions = [e for e in STEER_EMOTIONS if e in vectors.emotions]
    steer_emotions = pick_emotions(vectors, steer_emotions, "the preference experiment")
    table = study_activities()
    rng = np.random.default_rng(seed)
    chosen = list(range(len(table)))
    if n_activities is not None:
        if not 4 <= n_activities <= len(table):
            raise ExperimentError(f"n_activities must be 4..{len(table)}, got {n_activities}")
        chosen = sorted(rng.choice(len(table), n_activities, replace=False).tolist())
    acts = [table[i] for i in chosen]
    n = len(acts)
    prompt = build_prompt(lm, [row["activity"] for row in acts])
    runner = ChoiceRunner(lm, prompt, vectors, layer, batch_size)

    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    n_steer = min(n_steered, n)
    per_emotion = 2 * n_steer * min(n_opponents, n - n_steer or n)  # both orders
    total = len(pairs) + len(steer_emotions) * per_emotion
    with count_progress(total, "preferences", "pairs", progress) as tick:
        started = time.perf_counter()
        margins = runner.run(pairs)
        tick(len(pairs))
        base_seconds = time.perf_counter() - started
        elo, bias = fit_bradley_terry(n, pairs, margins)

        halves = split_half_elo(n, pairs, margins, rng)
        stability = spearman(*halves)

        probes = np.stack([runner.probes[a] for a in range(n)])  # [n, E]
        corr = {e: pearson(probes[:, i], elo) for i, e in enumerate(vectors.emotions)}

        # Steering on the activity tokens only.
        steered_items = sorted(rng.choice(n, min(n_steered, n), replace=False).tolist())
        pool = [i for i in range(n) if i not in steered_items] or list(range(n))
        opponents = sorted(rng.choice(pool, min(n_opponents, len(pool)), replace=False).tolist())
        started = time.perf_counter()
        baseline = PairFit(pairs, margins, elo, bias)
        per_item = {
            e: steered_elo_changes(
                runner, baseline, ({e: strength}, steer_layer), steered_items, opponents, tick
            )
            for e in steer_emotions
        }
        deltas = {e: float(np.mean(changes)) for e, changes in per_item.items()}
        steer_seconds = time.perf_counter() - started
    return preferences_result(
        PreferenceMeasurements(
            vectors=vectors,
            acts=acts,
            chosen=chosen,
            n_activities=n_activities,
            n=n,
            pairs=pairs,
            layer=layer,
            steer_layer=steer_layer,
            strength=strength,
            seed=seed,
            runner=runner,
            elo=elo,
            bias=bias,
            halves=halves,
            stability=stability,
            probes=probes,
            corr=corr,
            steer_emotions=list(steer_emotions),
            steered_items=steered_items,
            opponents=opponents,
            per_item=per_item,
            deltas=deltas,
            base_seconds=base_seconds,
            steer_seconds=steer_seconds,
        )
    )


@dataclass
class PreferenceMeasurements:
    """Everything :func:`run_preferences` measured, before it is put beside the study."""

    vectors: EmotionVectors
    acts: list[dict]
    chosen: list[int]
    n_activities: int | None
    n: int
    pairs: list[tuple[int, int]]
    layer: int
    steer_layer: int
    strength: float
    seed: int
    runner: ChoiceRunner
    elo: np.ndarray
    bias: float
    halves: list[np.ndarray]
    stability: float
    probes: np.ndarray
    corr: dict[str, float]
    steer_emotions: list[str]
    steered_items: list[int]
    opponents: list[int]
    per_item: dict[str, list[float]]
    deltas: dict[str, float]
    base_seconds: float
    steer_seconds: float


def preferences_result(m: PreferenceMeasurements) -> Result:
    """The preference experiment's result: settings, metrics with intervals, the comparisons
    with the study, tables and the figure."""

    shared = [e for e in m.steer_emotions if not math.isnan(m.corr[e])]
    relation = pearson([m.corr[e] for e in shared], [m.deltas[e] for e in shared])

    study_elo = [row["elo_post"] for row in m.acts]
    result = Result(
        "preferences",
        "Preferences between activities",
        order=60,
        settings={
            "question": QUESTION + " (reply prefilled up to '(')",
            "n_activities": m.n,
            "n_ordered_pairs": len(m.pairs),
            "probe_layer": m.layer,
            "steer_layer": m.steer_layer,
            "strength": m.strength,
            "steered_emotions": m.steer_emotions,
            "n_steered_activities": len(m.steered_items),
            "n_opponents": len(m.opponents),
            "seed": m.seed,
            "activities_subset": m.chosen if m.n_activities is not None else "all 64",
            "steering_design": "each steered activity vs the same opponents, both orders; "
            "its Elo refitted with all other ratings fixed",
        },
        metrics={
            "letter_bias_logit": m.bias,
            "elo_stability_spearman": m.stability,
            "probe_elo_r": m.corr,
            "steering_delta_elo": m.deltas,
            "steering_vs_correlation_r": relation,
            "elo_vs_study_spearman": spearman(m.elo, study_elo),
            "tokens_forwarded": m.runner.tokens,
            "seconds_all_pairs": round(m.base_seconds, 1),
            "seconds_steering": round(m.steer_seconds, 1),
        },
        data={
            "activities": [row["activity"] for row in m.acts],
            "elo": m.elo.round(1).tolist(),
            "study_elo": study_elo,
            "probes": {
                e: m.probes[:, i].round(5).tolist()
                for i, e in enumerate(m.vectors.emotions)
                if e in m.steer_emotions
            },
            "steering_per_activity": m.per_item,
            "steered_activities": m.steered_items,
            "opponents": m.opponents,
        },
    )
    # Every correlation beside the study's comes with its n and a 95% interval (Fisher z).
    intervals: dict[str, list[float] | None] = {}

    def compare_r(measure: str, key: str, r: float, n: int, study, note: str, method="pearson"):
        ci = correlation_ci(r, n, method)
        intervals[key] = list(ci) if ci else None
        result.compare(
            measure,
            shown_correlation(r, n),
            study,
            f"{describe_correlation(r, n, method)} {note}".strip(),
        )

    for e, study_r, study_d in (("blissful", 0.71, 212), ("hostile", -0.74, -303)):
        if e in m.vectors.emotions:
            compare_r(
                f"r(probe '{e}' on activity tokens, Elo)",
                f"probe_elo_r_{e}",
                m.corr[e],
                m.n,
                study_r,
                "(activities); study 64 activities",
            )
        if e in m.deltas:
            result.compare(
                f"Elo change steering '{e}' (s = {m.strength})",
                round(m.deltas[e], 1),
                f"{study_d:+d}",
            )
    compare_r(
        "r(steering Elo change, probe-Elo correlation) across emotions",
        "steering_vs_correlation_r",
        relation,
        len(shared),
        0.85,
        "(emotions); 35 in the study",
    )
    compare_r(
        "Elo rank stability: Spearman between two disjoint halves of the pairs",
        "elo_stability_spearman",
        m.stability,
        m.n,
        None,
        f"(activities); {m.n * (m.n - 1) // 4} unordered pairs per half",
        method="spearman",
    )
    compare_r(
        "Spearman of our Elo with the study's (Claude Sonnet 4.5)",
        "elo_vs_study_spearman",
        result.metrics["elo_vs_study_spearman"],
        m.n,
        None,
        "(activities); different model: only a loose match is expected",
        method="spearman",
    )
    result.metrics["ci95"] = intervals
    result.compare("letter bias (logit A minus B at equal Elo)", round(m.bias, 3))
    order = np.argsort(-m.elo)
    result.add_table(
        "Elo per activity (ours, and the study's post-trained model)",
        ["rank", "activity", "Elo", "study Elo"],
        [
            [r + 1, m.acts[i]["activity"], round(float(m.elo[i])), int(study_elo[i])]
            for r, i in enumerate(order)
        ],
    )
    top = sorted(m.corr.items(), key=lambda kv: -abs(kv[1]) if not math.isnan(kv[1]) else 0)
    result.add_table(
        "Emotions whose probe value on the activity tokens tracks Elo most",
        ["emotion", "r(probe, Elo)", "steering Elo change"],
        [[e, round(r, 3), round(m.deltas[e], 1) if e in m.deltas else ""] for e, r in top[:15]],
    )
    relation_text = (
        f"at r = {relation:+.2f} ({describe_correlation(relation, len(shared))}; study: 0.85)"
        if len(shared) >= MIN_N
        else f"over {len(shared)} emotions, {TOO_FEW} (study: 0.85 over 35)"
    )
    result.summary = (
        f"{len(m.pairs)} ordered choices among {m.n} activities (Elo stability between disjoint "
        f"halves: Spearman {m.stability:.2f}). Steering {len(m.steer_emotions)} emotions on the "
        f"activity tokens (s = {m.strength}): the Elo change tracks the probe-Elo correlation "
        f"{relation_text}."
    )
    result.add_figure(
        _plot(m.elo, m.halves, m.corr, m.deltas, m.steer_emotions),
        "preferences.png",
        "Left: Elo from one half of the pairs against the other. Right: per "
        "emotion, probe-Elo correlation against the Elo change from steering.",
    )
    return result


def _plot(elo, halves, corr, deltas, emotions):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].scatter(halves[0], halves[1], s=12)
    axes[0].set_xlabel("Elo from half 1 of the pairs")
    axes[0].set_ylabel("Elo from half 2")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].axvline(0, color="grey", lw=0.5)
    for e in emotions:
        axes[1].scatter(corr[e], deltas[e], s=14, color="tab:red")
        axes[1].annotate(e, (corr[e], deltas[e]), fontsize=7)
    axes[1].set_xlabel("r(probe on activity tokens, Elo)")
    axes[1].set_ylabel("mean Elo change when steered")
    fig.tight_layout()
    return fig
