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

__all__ = ["ExperimentError", "Result", "load_result", "run_all", "AllSettings", "AllResults"]


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


class AllResults(dict):
    """What :func:`run_all` returns: ``{name: Result}`` of the experiments that ran, plus
    :attr:`skipped`, ``{name: reason}`` of those the vector file could not serve."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, str] = {}


#: Folder (under run_all's ``out_dir``) of the report section listing skipped experiments.
SKIPPED_SECTION = "skipped"


def skipped_section(skipped: dict[str, str], vectors) -> Result:
    """A short report section: which experiments did not run, and why."""
    n = len(vectors.emotions)
    return Result(
        SKIPPED_SECTION,
        "Experiments skipped",
        order=3,
        summary=f"{len(skipped)} experiment{'' if len(skipped) == 1 else 's'} could not run on "
        f"this vector file ({n} emotions): {', '.join(skipped)}. Rebuild the vectors with the "
        "emotions named below (`emovec extract -e ...`), or with the whole catalogue, to run "
        "them.",
        tables=[
            {
                "title": "Skipped experiments",
                "columns": ["experiment", "reason"],
                "rows": [[name, reason] for name, reason in skipped.items()],
            }
        ],
        settings={"emotions": list(vectors.emotions)},
        data={"skipped": skipped},
    )


def run_all(
    lm,
    vectors,
    out_dir: str | Path,
    settings: AllSettings | None = None,
    log: Callable[[str], Any] = print,
    progress: bool = False,
) -> AllResults:
    """Run every experiment on ``lm``/``vectors``; each lands in ``out_dir/<name>``.

    ``progress`` shows progress inside the long ones (preferences), so that a run logged to a
    file is not silent for minutes.

    An experiment the vector file cannot serve (it raises :class:`ExperimentError`, e.g. a file
    built with ``extract -e ...`` that lacks emotions the experiment needs) is skipped, not
    fatal: the reason goes to the returned value's ``skipped`` and to a report section in
    ``out_dir/skipped``; the other experiments still run.
    """
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
            progress=progress,
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
    results = AllResults()
    for name, job in jobs.items():
        if name in s.skip:
            continue
        started = time.perf_counter()
        try:
            result = job()
        except ExperimentError as exc:
            reason = str(exc).strip() or type(exc).__name__
            results.skipped[name] = reason
            log(f"{name}: skipped ({reason})")
            continue
        result.settings["seconds"] = round(time.perf_counter() - started, 1)
        result.save(out_dir / name)
        log(f"{result.title}: {result.summary} ({result.settings['seconds']} s)")
        results[name] = result
    stale = out_dir / SKIPPED_SECTION / "result.json"
    if results.skipped:
        skipped_section(results.skipped, vectors).save(out_dir / SKIPPED_SECTION)
    elif stale.is_file():
        stale.unlink()  # an earlier run's list; everything ran this time
    return results
