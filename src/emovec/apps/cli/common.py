"""What every ``emovec`` command shares: the Typer app, consoles, options, error handling.

Errors: a known error (:class:`emovec.errors.EmovecError`, or an ``OSError`` naming a file)
is one red line on stderr and exit status 2; anything else is a bug and keeps its traceback.
``emovec --debug CMD`` shows the traceback of known errors too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from emovec.errors import EmovecError, InputError
from emovec.models import DEFAULT_MODEL

HELP = "Functional emotion vectors: extract, read and steer emotion directions in LMs."

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=HELP,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@dataclass
class RunOptions:
    """The global options of the current ``emovec`` run (set before any command runs)."""

    debug: bool = False


run_options = RunOptions()


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
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show the full traceback of every error, known ones too."),
    ] = False,
) -> None:
    run_options.debug = debug


# --- errors -------------------------------------------------------------------------------


def known_error_message(exc: BaseException) -> str | None:
    """The one line a user sees for a known error, or None for a bug (shown with traceback).

    Known: :class:`EmovecError` (its first line) and an ``OSError`` that names its file (not
    found, permission denied, disk full...).
    """
    if isinstance(exc, EmovecError):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        names = str(exc.filename)
        if exc.filename2 is not None:
            names += f" -> {exc.filename2}"
        return f"{names}: {exc.strerror or exc}"
    return None


def one_line_errors(fn: Callable) -> Callable:
    """Wrap a command so that its known errors become one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            message = known_error_message(exc)
            if message is None or run_options.debug:
                raise
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def command(fn: Callable) -> Callable:
    """Register a top-level subcommand (with one-line errors)."""
    return app.command()(one_line_errors(fn))


def group_command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a subcommand of ``group``, named after the function unless ``name`` is given."""

    def register(fn: Callable) -> Callable:
        cli_name = name or fn.__name__.rstrip("_").replace("_", "-")
        return group.command(cli_name)(one_line_errors(fn))

    return register


def command_group(name: str, help: str) -> typer.Typer:
    """A group of subcommands (``emovec NAME ...``), added to the app."""
    group = typer.Typer(no_args_is_help=True, help=help)
    app.add_typer(group, name=name)
    return group


# --- options --------------------------------------------------------------------------------

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
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --- helpers --------------------------------------------------------------------------------


def load_lm(
    spec: str | None, vectors: Any = None, dtype: str = "float32", device_map: str | None = None
) -> Any:
    """Load the model named, else the one the vectors were built from, else the default
    (said on stderr while it loads); vectors that belong to another model are refused."""
    from emovec.models import load_model

    name = spec or (vectors.model.get("name") if vectors is not None else None) or DEFAULT_MODEL
    with err.status(f"loading {name}..."):
        lm = load_model(name, dtype=dtype, device_map=device_map)
    if vectors is not None:
        vectors.check_model(lm)
    return lm


def parse_layers(text: str | None) -> list[int] | None:
    """Parse "10,12,14" or "10-14" (inclusive) into a list of layers (None for no text)."""
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
        raise InputError(f"layers must look like 10,12 or 8-14, got {text!r}") from exc
    return layers


def strength_pairs(emotions: list[str], strengths: list[float]) -> dict[str, float]:
    """``--emotion``/``--strength`` options paired in order (as many of each)."""
    if len(emotions) != len(strengths):
        raise InputError("give one --strength for each --emotion")
    return dict(zip(emotions, strengths, strict=True))


def default_strengths(emotions: list[str], model: str) -> dict[str, float]:
    """Each emotion at the model's recommended strength (``emovec models``), said aloud."""
    from emovec.models import BUILTIN, recommended_strength

    strength = recommended_strength(model)
    why = f"recommended for {model}" if model in BUILTIN else "the default for other models"
    err.print(
        f"strength {strength:g} for each emotion ({why}; -s to choose)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return dict.fromkeys(emotions, strength)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of a file the user named; unreadable ones are an :class:`InputError`."""
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {why}") from exc


def require_prompt(prompt: str | None) -> str:
    """``prompt`` when it holds more than whitespace (checked before a model loads)."""
    if prompt is None or not prompt.strip():
        raise InputError("empty prompt: give some text to continue")
    return prompt


def warn_if_exposed(host: str, api_key: str | None = None, *, takes_key: bool = True) -> None:
    """Warn on stderr when a server listens beyond loopback without a key."""
    if host in LOOPBACK or api_key:
        return
    why = (
        " without --api-key: anyone can use it"
        if takes_key
        else (": anyone who can reach it can use the model")
    )
    err.print(f"[yellow]warning:[/] listening on {host}{why}")
