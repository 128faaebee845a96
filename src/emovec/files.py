"""Crash-safe files: atomic whole-file writes, and an append-only JSON-lines log.

:func:`write_atomic` never leaves half a file under the real name (a crash or a full disk
leaves the old file or none). :class:`AppendLog` keeps records that arrive one at a time
(study rollouts, corpus replies): each append is one write of whole lines followed by an
fsync, and on opening, the damage a crash can leave is repaired without losing a record that
was written whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` for writers that want a name (safetensors, GGUF,
    matplotlib): once the block ends without error the file is fsynced, made world-readable
    (0644: results are meant to be shared) and renamed over ``path``; on any error it is
    removed and the error re-raised. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` so that ``path`` holds the old content or the new, never half of it
    (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


# --------------------------------------------------------------------------- append-only log


class DamagedLogWarning(UserWarning):
    """A log held lines that are not records; they were skipped and every other record kept."""


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


@dataclass
class LogScan:
    """What a log file holds: its whole records, the lines that are not records, and where
    its last complete line ends (anything after it is a torn last line)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    #: 1-based line numbers of complete lines that are not records (skipped).
    damaged: list[int] = field(default_factory=list)
    #: Bytes up to the end of the last complete line (its newline included).
    complete: int = 0
    #: Bytes of a torn last line (no newline): a write killed mid-line.
    torn: int = 0


def scan_log(data: bytes, required: Sequence[str] = ()) -> LogScan:
    """Split log bytes into records, damaged lines and a torn tail.

    A record is a complete line (ending in a newline) that is UTF-8 JSON for an object holding
    every key in ``required``. Blank lines are ignored. Any other complete line is damaged and
    skipped, and the records after it are kept. Bytes after the last newline are a torn last
    line, never a record, even when they happen to parse.
    """
    scan = LogScan()
    pos, number = 0, 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        number += 1
        line = data[pos:end]
        pos = end + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            record = None
        if isinstance(record, dict) and all(k in record for k in required):
            scan.records.append(record)
        else:
            scan.damaged.append(number)
    scan.complete, scan.torn = pos, len(data) - pos
    return scan


def _warn_damaged(path: Path, damaged: Sequence[int], stacklevel: int) -> None:
    shown = ", ".join(map(str, damaged[:10])) + (" ..." if len(damaged) > 10 else "")
    warnings.warn(
        f"{path}: {len(damaged)} damaged line(s) skipped (line {shown}); every other record "
        "was kept",
        DamagedLogWarning,
        stacklevel=stacklevel + 1,
    )


def read_log(
    path: str | Path, required: Sequence[str] = (), warn: bool = True
) -> list[dict[str, Any]]:
    """The records of an append log, read without changing the file (safe while another
    process appends): a torn last line is ignored, and damaged lines are skipped with a
    :class:`DamagedLogWarning` while every later record is kept. A missing file has none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    scan = scan_log(data, required)
    if scan.damaged and warn:
        _warn_damaged(path, scan.damaged, stacklevel=2)
    return scan.records


class AppendLog:
    """An append-only file of JSON records, one a line, that a crash cannot cost a whole record.

    Opening it reads every record. A torn last line (a write killed mid-line) is cut off, so
    the file ends at its last complete line and the next append starts a clean line; the
    number of bytes cut is in :attr:`cut`. A damaged line elsewhere (not JSON, not an object,
    missing a ``required`` key) is skipped, its line number put in :attr:`damaged` and a
    :class:`DamagedLogWarning` issued; the records after it are kept, and appends go on after
    it. Each :meth:`append` / :meth:`extend` is one ``write`` of whole lines followed by an
    fsync, so once it returns the records survive a crash; if the write fails (a full disk)
    the file is cut back to where it was and the error re-raised.

    One writer at a time: the log does not lock the file against a second process.
    """

    def __init__(
        self,
        path: str | Path,
        required: Sequence[str] = (),
        dumps: Callable[[Any], str] = _dumps,
        warn: bool = True,
    ):
        self.path = Path(path)
        self.required = tuple(required)
        self._dumps = dumps
        self.records: list[dict[str, Any]] = []
        self.damaged: list[int] = []
        self.cut = 0
        try:
            f = open(self.path, "r+b")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with f:
            scan = scan_log(f.read(), self.required)
            if scan.torn:
                f.truncate(scan.complete)
                f.flush()
                os.fsync(f.fileno())
        self.records, self.damaged, self.cut = scan.records, scan.damaged, scan.torn
        if self.damaged and warn:
            _warn_damaged(self.path, self.damaged, stacklevel=2)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and fsync."""
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as one write of whole lines, then fsync (all written or none kept)."""
        records = list(records)
        if not records:
            return
        for r in records:
            if not isinstance(r, dict) or any(k not in r for k in self.required):
                raise ValueError(f"not a record for {self.path}: needs keys {self.required}")
        lines = [self._dumps(r) for r in records]
        if any("\n" in line for line in lines):
            raise ValueError("a log record must serialise to one line")
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # else the next open cuts the half-written lines
                os.ftruncate(fd, start)
            raise
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        self.records.extend(records)


def _fsync_dir(folder: Path) -> None:
    """Make a new file's name durable too (best effort: not every system can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
