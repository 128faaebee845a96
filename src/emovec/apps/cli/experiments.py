"""``emovec run``, ``emovec experiment ...`` and ``emovec report``: the study's checks, each a
result folder, and the page that shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from emovec.apps.cli.common import (
    ModelOpt,
    command,
    command_group,
    err,
    group_command,
    load_lm,
    out,
    parse_layers,
)
from emovec.errors import InputError
from emovec.models import DEFAULT_MODEL


@command
def run(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "emovec-out"
    ),
    model: Annotated[str, typer.Option("--model", "-m")] = DEFAULT_MODEL,
    samples: Annotated[int, typer.Option(help="Steered samples per prompt and condition.")] = 3,
    rebuild: Annotated[bool, typer.Option(help="Rebuild vectors even if cached.")] = False,
) -> None:
    """The main job: build vectors from the curated corpus, validate, read and steer."""
    from emovec.apps.pipeline import run_pipeline

    run_pipeline(out_dir, model=model, samples_per_prompt=samples, rebuild=rebuild, console=out)


experiment_app = command_group(
    "experiment",
    "Rerun the study's experiments; each writes result.json + PNG plots to a folder.",
)

ExpOut = Annotated[
    Path | None, typer.Option("--out", "-o", help="Result folder (default emovec-out/<name>).")
]

ExpVectors = Annotated[Path, typer.Option("--vectors", "-v", help="Vector file (.safetensors).")]

ExpLayer = Annotated[int | None, typer.Option(help="Layer (default: the vector file's).")]

PositionOpt = Annotated[
    str,
    typer.Option(
        help="Where each user message is read: 'message' (its own tokens averaged, as "
        "`read --chat`) or 'reply-start' (the reply's first position, as the study's sweeps)."
    ),
]

experiment_command = group_command(experiment_app)


def vectors_and_model(vectors: Path, model: str | None) -> tuple[Any, Any]:
    """The vector file and the model it belongs to (``model`` overrides its name)."""
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    return vecs, load_lm(model, vecs)


def _save(result: Any, out_path: Path | None) -> None:
    """Save an experiment's result folder and print its summary and comparison."""
    folder = result.save(out_path or Path("emovec-out") / result.name)
    out.print(f"[bold]{result.title}[/]: {result.summary}")
    for row in result.comparison:
        study = "" if row["study"] is None else f"  (study: {row['study']})"
        out.print(f"  {row['measure']}: {row['ours']}{study}")
    out.print(f"wrote {folder}/result.json")


@experiment_command
def sweeps(
    vectors: ExpVectors,
    templates: Annotated[
        Path | None,
        typer.Option(help="JSON list of {name, template with {X}, values, expect} to sweep."),
    ] = None,
    study: Annotated[bool, typer.Option(help="Include the study's six sweeps.")] = True,
    model: ModelOpt = None,
    layer: ExpLayer = None,
    position: PositionOpt = "reply-start",
    out_path: ExpOut = None,
) -> None:
    """Severity sweeps: probe values at the reply's start as a number in the prompt grows."""
    from emovec.experiments import sweeps as mod

    chosen = list(mod.STUDY_SWEEPS) if study else []
    if templates is not None:
        chosen += mod.load_templates(templates)
    if not chosen:
        raise InputError("no sweeps: give --templates FILE or leave --study on")
    vecs, lm = vectors_and_model(vectors, model)
    _save(mod.run_sweeps(lm, vecs, chosen, layer=layer, position=position), out_path)


@experiment_command
def implicit(
    vectors: ExpVectors,
    model: ModelOpt = None,
    layer: ExpLayer = None,
    position: PositionOpt = "message",
    out_path: ExpOut = None,
) -> None:
    """Messages that imply an emotion without naming it: the scenario x emotion diagonal."""
    from emovec.experiments.implicit import run_implicit

    vecs, lm = vectors_and_model(vectors, model)
    _save(run_implicit(lm, vecs, layer=layer, position=position), out_path)


@experiment_command
def geometry(
    vectors: ExpVectors, layer: ExpLayer = None, seed: int = 0, out_path: ExpOut = None
) -> None:
    """PCA of the vectors, human valence/arousal norms, k-means vs the study's families."""
    from emovec.experiments.geometry import run_geometry
    from emovec.vectors import EmotionVectors

    _save(run_geometry(EmotionVectors.load(vectors), layer=layer, seed=seed), out_path)


@experiment_command
def logit_lens(
    vectors: ExpVectors,
    emotion: Annotated[list[str] | None, typer.Option("--emotion", "-e")] = None,
    model: ModelOpt = None,
    layer: ExpLayer = None,
    k: int = 10,
    out_path: ExpOut = None,
) -> None:
    """Tokens each emotion vector promotes and suppresses through the unembedding."""
    from emovec.experiments.logit_lens import run_logit_lens

    vecs, lm = vectors_and_model(vectors, model)
    _save(run_logit_lens(lm, vecs, emotions=emotion or None, layer=layer, k=k), out_path)


@experiment_command
def layer_sweep(
    vectors: ExpVectors,
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option(help="e.g. 5-25 (default: all).")] = None,
    out_path: ExpOut = None,
) -> None:
    """Every metric at every layer, one figure."""
    from emovec.experiments.layer_sweep import run_layer_sweep

    vecs, lm = vectors_and_model(vectors, model)
    _save(run_layer_sweep(lm, vecs, parse_layers(layers)), out_path)


@experiment_command
def scorecard(
    vectors: ExpVectors,
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option(help="e.g. 10-24 (default: all).")] = None,
    results: Annotated[
        Path | None,
        typer.Option(help="A main-job folder: steering, preference and case-study checks."),
    ] = None,
    pool: Annotated[str, typer.Option(help="Pooling of the other-style messages.")] = "all",
    out_path: ExpOut = None,
) -> None:
    """Every check of the study with our figure, the study's, and pass/fail, per layer."""
    from emovec.experiments.scorecard import run_scorecard

    vecs, lm = vectors_and_model(vectors, model)
    result = run_scorecard(
        lm, vecs, parse_layers(layers), results_dir=results, pool=pool, progress=True
    )
    table = Table(*result.tables[0]["columns"], title=result.tables[0]["title"])
    for row in result.tables[0]["rows"]:
        table.add_row(*[str(x) for x in row])
    out.print(table)
    _save(result, out_path)


@experiment_command
def preferences(
    vectors: ExpVectors,
    model: ModelOpt = None,
    activities: Annotated[
        int | None, typer.Option(help="Seeded subset of the 64 activities (default: all).")
    ] = None,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Emotions to steer.")
    ] = None,
    steered: Annotated[int, typer.Option(help="Activities steered per emotion.")] = 8,
    opponents: Annotated[int, typer.Option(help="Opponents of each steered activity.")] = 16,
    strength: float = 0.5,
    layer: ExpLayer = None,
    seed: int = 0,
    out_path: ExpOut = None,
) -> None:
    """Elo of the study's 64 activities, probe correlations, steering effects, stability."""
    from emovec.experiments.preferences import run_preferences

    vecs, lm = vectors_and_model(vectors, model)
    result = run_preferences(
        lm,
        vecs,
        n_activities=activities,
        steer_emotions=emotion or None,
        n_steered=steered,
        n_opponents=opponents,
        strength=strength,
        layer=layer,
        seed=seed,
        progress=True,
    )
    _save(result, out_path)


@experiment_command
def posttrain(
    vectors: ExpVectors,
    base: Annotated[str | None, typer.Option(help="Base model spec.")] = None,
    post: Annotated[str | None, typer.Option(help="Post-trained model spec.")] = None,
    push: Annotated[
        str | None,
        typer.Option(help="Instead of --post: the base with its weights pushed along EMOTION."),
    ] = None,
    strength: Annotated[float, typer.Option(help="Push strength (with --push).")] = 0.1,
    layer: ExpLayer = None,
    out_path: ExpOut = None,
) -> None:
    """The same vectors read in two models: per-emotion shift, beside the study's table."""
    from emovec.experiments.posttrain import pushed_copy, run_posttrain
    from emovec.models import load_model
    from emovec.vectors import EmotionVectors

    if (post is None) == (push is None):
        raise InputError("give exactly one of --post MODEL or --push EMOTION")
    vecs = EmotionVectors.load(vectors)
    base_lm = load_model(base or vecs.model.get("name") or DEFAULT_MODEL)
    note = ""
    if push is not None:
        post_lm = pushed_copy(base_lm, vecs, push, strength)
        note = f"Known-answer check: '{vecs.resolve(push)}' must rank first."
    else:
        post_lm = load_model(post)
    _save(run_posttrain(base_lm, post_lm, vecs, layer=layer, note=note), out_path)


@experiment_command
def all(  # noqa: A001 - the subcommand's name
    vectors: ExpVectors,
    model: ModelOpt = None,
    out_path: Annotated[Path, typer.Option("--out", "-o")] = Path("emovec-out/experiments"),
    activities: Annotated[int | None, typer.Option(help="Preference activities (seeded).")] = 32,
) -> None:
    """Every experiment with the main job's settings, then the report.

    Experiments the vector file cannot serve (a file built with ``extract -e ...`` lacks
    emotions they need) are skipped with the reason, listed in the report; the rest still run.
    """
    from emovec.apps.report import build_report
    from emovec.experiments import AllSettings, run_all

    vecs, lm = vectors_and_model(vectors, model)
    results = run_all(
        lm, vecs, out_path, AllSettings(n_activities=activities), log=out.print, progress=True
    )
    skipped = getattr(results, "skipped", {})
    context = {"model": vecs.model, "vectors": str(vectors)}
    if skipped:
        context["skipped"] = ", ".join(skipped)
    out.print(f"wrote {build_report(out_path, context=context)}")
    if skipped:
        err.print(
            f"[yellow]skipped {len(skipped)} of {len(skipped) + len(results)} experiments[/] "
            f"({', '.join(skipped)}): the vector file lacks what they need; reasons in the report",
            highlight=False,
            soft_wrap=True,
        )


@command
def report(
    folder: Annotated[Path, typer.Argument(help="Folder holding result folders.")] = Path(
        "emovec-out"
    ),
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file (default FOLDER/report.html).")
    ] = None,
    title: str = "emovec report",
) -> None:
    """One self-contained HTML page of every result folder under FOLDER."""
    from emovec.apps.report import build_report

    out.print(f"wrote {build_report(folder, out_file, title=title)}")
