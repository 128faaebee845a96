"""The one base of the errors emovec raises on purpose, so front ends can tell them from bugs.

Every error that explains a user's mistake or a missing resource derives from
:class:`EmovecError` (and, for compatibility with ``except ValueError`` callers, from the
built-in class it always was). The CLI prints an ``EmovecError`` as one line and exits with
status 2; anything else is a bug and keeps its traceback. ``emovec --debug`` shows the
traceback for known errors too.
"""

from __future__ import annotations


class EmovecError(Exception):
    """An error whose message names the problem and the fix; shown to users as one line."""


class InputError(EmovecError, ValueError):
    """An argument, option or file content that emovec cannot use (the message says why)."""


class MissingDependencyError(EmovecError, ImportError):
    """An optional extra is not installed (the message names the ``pip install`` to run)."""
