"""The files of a corpus folder, written so that a kill or a full disk loses no finished work.

The reply log is an :class:`emovec.files.AppendLog` (fsynced appends, torn tail cut); every
other file is rewritten whole with :func:`emovec.files.write_atomic`. A full disk becomes an
:class:`AuthoringError` that says what is safe and that rerunning continues.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emovec.authoring.design import AuthoringError
from emovec.files import AppendLog, write_atomic

MANIFEST = "manifest.json"
FORMAT = "emovec-corpus/1"

#: ``OSError`` numbers that mean "no room left" (disk, quota, file size limit).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def _explain_full_disk(path: Path, safe: str) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into an AuthoringError saying what is ``safe``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise AuthoringError(
                f"disk full while writing {path}: {safe}; "
                "free some space and rerun the same command"
            ) from exc
        raise


class ReplyLog:
    """The append-only record of finished requests (one JSON line each, fsynced).

    An :class:`emovec.files.AppendLog`: a half-written last line (a kill mid-write) is cut
    off. A damaged line in the middle is refused, naming the line, rather than skipped: the
    log is the corpus's only copy of its replies, so a person should look at it first.
    """

    def __init__(self, path: Path):
        self.path = path
        self._log = AppendLog(path, required=("index",), warn=False)
        if self._log.damaged:
            raise AuthoringError(
                f"{self.path}:{self._log.damaged[0]}: damaged record in the middle of the file; "
                "delete that line and rerun"
            )
        self.records: dict[int, dict[str, Any]] = {r["index"]: r for r in self._log.records}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write records and fsync; on a full disk, cut back to the last whole line and explain."""
        safe = f"the {len(self.records)} requests written before are safe"
        with _explain_full_disk(self.path, safe):
            self._log.extend(records)
        for r in records:
            self.records[r["index"]] = r


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, replacing ``path`` whole (see :func:`_write_atomic`)."""
    _write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def write_jsonl_atomic(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """``records`` as JSON lines, replacing ``path`` whole (see :func:`_write_atomic`)."""
    _write_atomic(
        path, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """:func:`emovec.files.write_atomic`, with a full disk explained in corpus terms."""
    with _explain_full_disk(path, "the generated replies are safe"):
        write_atomic(path, data)


def records_hash(stories: Sequence[dict], neutral: Sequence[dict]) -> str:
    """The content hash ``Corpus.hash`` gives for these records (recorded in vector files)."""
    from emovec.corpus import Corpus

    return Corpus(list(stories), list(neutral)).hash


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, or a fresh one when it has none yet."""
    path = folder / MANIFEST
    if not path.exists():
        return {"format": FORMAT}
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise AuthoringError(f"cannot read {path}: {exc}") from exc
