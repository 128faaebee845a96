"""``emovec export|import llama-cpp``: emotion steering as other tools' files, and theirs here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from emovec.apps.cli.common import (
    ModelOpt,
    VectorsOpt,
    command_group,
    default_strengths,
    group_command,
    load_lm,
    out,
    parse_layers,
    require_prompt,
    strength_pairs,
)
from emovec.models import BUILTIN

export_app = command_group("export", "Write emotion steering for other tools.")
import_app = command_group("import", "Read and use other tools' steering files.")


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
        strengths = strength_pairs(emotion, strength)
    else:
        names = [vecs.resolve(e) for e in emotion]
        strengths = default_strengths(names, str(vecs.model.get("name", "")))
    path = export_control_vector(vecs, strengths, out_path, layers=parse_layers(layers))
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
    from emovec.generation import generate
    from emovec.llama_cpp import apply_control_vector, check_control_vector, read_control_vector

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
    if prompt is not None:
        require_prompt(prompt)
    lm = load_lm(model or (made_for if made_for in BUILTIN else None))
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
