"""``emovec monitor`` (generate while watching emotions in the terminal) and ``emovec serve``
(the same in a web dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from emovec.apps.cli.common import (
    DeviceMapOpt,
    DtypeOpt,
    ModelOpt,
    VectorsOpt,
    command,
    err,
    load_lm,
    out,
    require_prompt,
    warn_if_exposed,
)
from emovec.errors import MissingDependencyError

#: One colour per watched emotion, in order (the token stream is tinted by the top one).
PALETTE = ["red", "magenta", "yellow", "blue", "green", "cyan", "bright_red", "bright_blue"]


def _watched(vecs: Any, emotion: list[str] | None) -> list[str]:
    """The emotions named (resolved), else the monitor's default set."""
    from emovec.monitor import default_watch

    return [vecs.resolve(e) for e in emotion] if emotion else default_watch(vecs)


def _say(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _baseline(
    lm: Any, vecs: Any, layer: int | None, path: Path | None, texts: Path | None, limit: int
) -> Any:
    """The z-score baseline: the file at ``path``, else calibrated (said on stderr)."""
    from emovec.monitor import load_or_calibrate, read_calibration_texts

    return load_or_calibrate(
        lm,
        vecs,
        layer,
        path,
        texts=None if texts is None else read_calibration_texts(texts),
        limit=limit,
        announce=_say,
        source=None if texts is None else f"texts of {texts}",
        progress=True,
    )


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

    from emovec.monitor import AlertRule, LiveMonitor, parse_strengths
    from emovec.vectors import EmotionVectors

    require_prompt(prompt)
    rules = [AlertRule.parse(a) for a in alert or []]
    steering = parse_strengths(steer_with) if steer_with else None
    vecs = EmotionVectors.load(vectors)
    watched = _watched(vecs, emotion)
    if layer is not None:
        vecs.layer_index(layer)
    lm = load_lm(model, vecs, dtype, device_map)
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
        raise MissingDependencyError(
            "emovec serve needs fastapi and uvicorn: pip install 'emovec[serve]'"
        ) from exc
    from emovec.apps.server import serve as run_server
    from emovec.apps.web_guard import new_token
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = load_lm(model, vecs)
    base = _baseline(lm, vecs, None, baseline, None, calibrate_limit)
    warn_if_exposed(host, takes_key=False)
    token = None if no_token else new_token()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    out.print(f"emovec dashboard on {url}", markup=False, highlight=False)
    out.print(f"(data folder: {data.resolve()}; open the URL above, token included)", markup=False)
    run_server(lm, vecs, data_dir=data, host=host, port=port, baseline=base, token=token)
