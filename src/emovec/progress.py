"""Progress for long jobs: a rich bar on a terminal, plain periodic lines in logs, or silence.

A live bar is invisible when stderr is a file or a pipe (CI logs, ``nohup``, ``| tee``), so
there :class:`PlainProgress` prints a line every ``PLAIN_EVERY_S`` seconds instead:
``extracting: 35% (1200/3400 texts), 2m10s elapsed, ~4m left``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: Seconds between plain progress lines: regular enough to show life, few enough for a log.
PLAIN_EVERY_S = 10.0


def duration(seconds: float) -> str:
    """``45s``, ``2m10s`` or ``1h05m``: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fill_fields(unit: str, fields: dict[str, Any]) -> str:
    """The rich column text ``unit`` with its ``{task.fields[name]}`` slots filled in."""
    return re.sub(r"\{task\.fields\[(\w+)\]\}", lambda m: str(fields.get(m.group(1), "")), unit)


class PlainProgress:
    """Progress as plain lines on ``stream``: at the start, at the first step done after each
    ``every_s`` seconds, and when done."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = PLAIN_EVERY_S,
        **fields: Any,
    ) -> None:
        self.label, self.total, self.unit, self.stream, self.clock = (
            label,
            total,
            unit,
            stream,
            clock,
        )
        self.every_s, self.fields = every_s, fields
        self.done = 0
        self.started = self.last = clock()
        self._write(f"{label}: starting ({total} {self._unit()})")

    def _unit(self) -> str:
        return _fill_fields(self.unit, self.fields)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def line(self) -> str:
        """The current state: share done, counts, elapsed time and the time left."""
        elapsed = self.clock() - self.started
        share = f"{self.done / self.total:.0%} " if self.total > 0 else ""
        text = f"{self.label}: {share}({self.done}/{self.total} {self._unit()}), "
        text += f"{duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", ~{duration(elapsed * (self.total - self.done) / self.done)} left"
        return text

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Count ``n`` more done (and update the extra fields); print a line when one is due."""
        self.done += n
        self.fields.update(fields)
        now = self.clock()
        if now - self.last >= self.every_s and self.done < self.total:
            self._write(self.line())
            self.last = now

    def close(self) -> None:
        """The closing line: what was done and how long it took."""
        elapsed = duration(self.clock() - self.started)
        self._write(f"{self.label}: done, {self.done}/{self.total} {self._unit()} in {elapsed}")


def _is_terminal(stream: TextIO | None) -> bool:
    if stream is not None:
        return bool(getattr(stream, "isatty", lambda: False)())
    from rich.console import Console

    return Console(stderr=True).is_terminal


@contextmanager
def _bar(
    label: str,
    total: int,
    unit: str,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    **fields: Any,
) -> Iterator[Callable[..., None]]:
    """Yield ``update(n, **fields)``: a rich bar (label, bar, done/total and ``unit``, elapsed
    time, ETA) on a terminal; plain periodic lines on ``stream`` (default stderr) otherwise."""
    if not _is_terminal(stream):
        plain = PlainProgress(label, total, unit, stream or sys.stderr, clock, **fields)
        try:
            yield plain.advance
        finally:
            plain.close()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    console = Console(file=stream) if stream is not None else Console(stderr=True)
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, **fields)
        yield lambda n, **changed: bar.update(task, advance=n, **changed)


@contextmanager
def count_progress(
    total: int,
    label: str,
    unit: str = "items",
    enabled: bool = True,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows ``unit`` done of ``total``, elapsed time and ETA (as plain
    lines on ``stream``, default stderr, when it is not a terminal)."""
    if not enabled:
        yield lambda _n: None
        return
    with _bar(label, total, unit, stream, clock) as update:
        yield lambda n: update(n)


def token_progress(total: int, label: str, enabled: bool = True) -> Any:
    """:func:`count_progress` counting tokens (extraction, calibration)."""
    return count_progress(total, label, "tokens", enabled)


@contextmanager
def request_progress(
    total: int,
    label: str,
    enabled: bool = True,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[int, int, int], None]]:
    """Yield ``advance(requests, accepted, seen)``; also shows the share of items accepted so
    far (for corpus writing)."""
    if not enabled:
        yield lambda _n, _a, _s: None
        return
    tally = {"accepted": 0, "seen": 0}
    unit = "requests, accepted {task.fields[rate]}"
    with _bar(label, total, unit, stream, clock, rate="-") as update:

        def advance(n: int, accepted: int, seen: int) -> None:
            tally["accepted"] += accepted
            tally["seen"] += seen
            update(n, rate=f"{tally['accepted'] / max(tally['seen'], 1):.0%}")

        yield advance
