"""Progress bars for long jobs (rich, on stderr), or silence when not wanted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def _bar(label: str, total: int, unit: str, **fields) -> Iterator[tuple]:
    """A rich bar: label, bar, done/total and ``unit``, elapsed time and ETA."""
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
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield bar, bar.add_task(label, total=total, **fields)


@contextmanager
def count_progress(
    total: int, label: str, unit: str = "items", enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows ``unit`` done of ``total``, elapsed time and ETA."""
    if not enabled:
        yield lambda _n: None
        return
    with _bar(label, total, unit) as (bar, task):
        yield lambda n: bar.advance(task, n)


def token_progress(total: int, label: str, enabled: bool = True):
    """:func:`count_progress` counting tokens (extraction, calibration)."""
    return count_progress(total, label, "tokens", enabled)


@contextmanager
def request_progress(
    total: int, label: str, enabled: bool = True
) -> Iterator[Callable[[int, int, int], None]]:
    """Yield ``advance(requests, accepted, seen)``; also shows the share of items accepted so
    far (for corpus writing)."""
    if not enabled:
        yield lambda _n, _a, _s: None
        return
    tally = {"accepted": 0, "seen": 0}
    unit = "requests, accepted {task.fields[rate]}"
    with _bar(label, total, unit, rate="-") as (bar, task):

        def advance(n: int, accepted: int, seen: int) -> None:
            tally["accepted"] += accepted
            tally["seen"] += seen
            rate = f"{tally['accepted'] / max(tally['seen'], 1):.0%}"
            bar.update(task, advance=n, rate=rate)

        yield advance
