"""The study's validation and preference experiments, each a function returning a
:class:`~emovec.experiments.result.Result` that saves JSON and PNG plots to a folder.

=============  ==============================================================
sweeps         severity sweeps read at the start of the reply (Spearman)
implicit       messages implying an emotion: the scenario x emotion diagonal
geometry       PCA, human valence/arousal norms, k-means vs the study's families
logit_lens     tokens each vector promotes through the unembedding
layer_sweep    every metric at every layer
preferences    64 activities: Elo, probe correlations, steering, stability
posttrain      the same vectors read in two models (base vs post-trained)
=============  ==============================================================

:func:`run_all` runs them all into one folder tree; ``emovec report`` renders it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emovec.experiments.common import ExperimentError
from emovec.experiments.result import Result, load_result

__all__ = ["ExperimentError", "Result", "load_result", "run_all", "AllSettings"]


@dataclass
class AllSettings:
    """Sizes of a full run (the main job's defaults) or of a quick one."""

    n_activities: int | None = 32
    n_steered: int = 6
    n_opponents: int = 10
    steer_emotions: list[str] | None = None
    posttrain_emotion: str = "brooding"
    posttrain_strength: float = 0.1
    layers: list[int] | None = None
    seed: int = 0
    skip: list[str] = field(default_factory=list)


def run_all(
    lm,
    vectors,
    out_dir: str | Path,
    settings: AllSettings | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Result]:
    """Run every experiment on ``lm``/``vectors``; each lands in ``out_dir/<name>``."""
    import time

    from emovec.experiments import (
        geometry,
        implicit,
        layer_sweep,
        logit_lens,
        posttrain,
        preferences,
        sweeps,
    )

    s = settings or AllSettings()
    out_dir = Path(out_dir)
    emotion = s.posttrain_emotion if s.posttrain_emotion in vectors.emotions else None
    jobs: dict[str, Callable[[], Result]] = {
        "sweeps": lambda: sweeps.run_sweeps(lm, vectors),
        "implicit": lambda: implicit.run_implicit(lm, vectors),
        "geometry": lambda: geometry.run_geometry(vectors, seed=s.seed),
        "logit_lens": lambda: logit_lens.run_logit_lens(lm, vectors),
        "layer_sweep": lambda: layer_sweep.run_layer_sweep(lm, vectors, s.layers),
        "preferences": lambda: preferences.run_preferences(
            lm,
            vectors,
            n_activities=s.n_activities,
            steer_emotions=s.steer_emotions,
            n_steered=s.n_steered,
            n_opponents=s.n_opponents,
            seed=s.seed,
        ),
        "posttrain": lambda: posttrain.run_posttrain(
            lm,
            posttrain.pushed_copy(
                lm, vectors, emotion or vectors.emotions[0], s.posttrain_strength
            ),
            vectors,
            note="Known-answer check: no base and post-trained pair of one architecture is "
            "bundled, so the second model is the first with a bias on one block's MLP "
            "output projection that pushes the residual stream along "
            f"'{emotion or vectors.emotions[0]}', which must rank first.",
        ),
    }
    results = {}
    for name, job in jobs.items():
        if name in s.skip:
            continue
        started = time.perf_counter()
        result = job()
        result.settings["seconds"] = round(time.perf_counter() - started, 1)
        result.save(out_dir / name)
        log(f"{result.title}: {result.summary} ({result.settings['seconds']} s)")
        results[name] = result
    return results
