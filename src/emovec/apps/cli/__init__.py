"""The ``emovec`` command: a thin shell over the Python API (parse, call, print).

:mod:`~emovec.apps.cli.common` holds the Typer app, the shared options and the error policy;
each module of :data:`COMMAND_MODULES` registers its commands when imported.
"""

from __future__ import annotations

from importlib import import_module

from emovec.apps.cli.common import app

#: The modules that register commands, in the order ``emovec --help`` lists them.
COMMAND_MODULES = ("vectors", "experiments", "study", "monitor", "api", "corpus", "interop")
for _module in COMMAND_MODULES:
    import_module(f"{__name__}.{_module}")

__all__ = ["COMMAND_MODULES", "app", "main"]


def main() -> None:
    """Entry point of the ``emovec`` console script and of ``python -m emovec``."""
    app()
