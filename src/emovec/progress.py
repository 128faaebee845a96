"""Progress bars for long jobs (rich), or silence when not wanted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def token_progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows tokens done, elapsed time and ETA on stderr when enabled."""
    if not enabled:
        yield lambda _n: None
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
        TextColumn("tokens"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def request_progress(
    total: int, label: str, enabled: bool = True
) -> Iterator[Callable[[int, int, int], None]]:
    """Yield ``advance(requests, accepted, seen)``; shows requests done, ETA and the share of
    items accepted so far (for corpus writing)."""
    if not enabled:
        yield lambda _n, _a, _s: None
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
        TextColumn("requests, accepted {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    tally = {"accepted": 0, "seen": 0}
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total, rate="-")

        def advance(n: int, accepted: int, seen: int) -> None:
            tally["accepted"] += accepted
            tally["seen"] += seen
            rate = f"{tally['accepted'] / max(tally['seen'], 1):.0%}"
            bar.update(task, advance=n, rate=rate)

        yield advance
