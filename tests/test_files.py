"""Crash-safe files: the append-only log (torn tails cut, damaged lines skipped, fsync per
append, a failed write cut back) and atomic whole-file writes."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import pytest

from emovec import files
from emovec.files import AppendLog, DamagedLogWarning, read_log, scan_log, write_atomic


def lines(n: int, start: int = 0) -> list[dict]:
    return [{"index": i, "text": f"record {i} \u00e9"} for i in range(start, start + n)]


def write_log(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_damaged_middle_record_is_skipped_and_no_later_record_is_lost(tmp_path):
    path = tmp_path / "log.jsonl"
    write_log(path, lines(6))
    raw = path.read_bytes().split(b"\n")
    raw[1] = raw[1][:9] + b"\xff\x00garbage"  # line 2: bytes flipped in place
    raw[3] = b'["a list, not a record"]'  # line 4: JSON, but not an object
    path.write_bytes(b"\n".join(raw))
    before = path.read_bytes()
    with pytest.warns(DamagedLogWarning, match=r"2 damaged line\(s\) skipped \(line 2, 4\)"):
        log = AppendLog(path)
    assert log.damaged == [2, 4] and log.cut == 0
    assert [r["index"] for r in log] == [0, 2, 4, 5]  # every record after the damage kept
    assert path.read_bytes() == before  # skipping changes nothing on disk
    log.append({"index": 6, "text": "after"})
    with pytest.warns(DamagedLogWarning):
        again = AppendLog(path)
    assert [r["index"] for r in again] == [0, 2, 4, 5, 6] and again.damaged == [2, 4]
    with pytest.warns(DamagedLogWarning):
        assert read_log(path) == again.records
    # a line without a required key is damaged too; blank lines are not
    path.write_text('{"index": 0}\n\n{"other": 1}\n{"index": 2}\n')
    with pytest.warns(DamagedLogWarning, match="line 3"):
        assert [r["index"] for r in AppendLog(path, required=("index",))] == [0, 2]


def test_a_torn_last_line_is_cut_and_the_next_append_is_clean(tmp_path):
    path = tmp_path / "log.jsonl"
    write_log(path, lines(3))
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"index": 3, "text": "cut sho')  # a write killed mid-line
    assert [r["index"] for r in read_log(path)] == [0, 1, 2]  # reading alone changes nothing
    assert path.read_bytes() != whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn tail is expected after a kill: no warning
        log = AppendLog(path)
    assert path.read_bytes() == whole and log.cut == len(b'{"index": 3, "text": "cut sho')
    assert [r["index"] for r in log] == [0, 1, 2] and log.damaged == []
    log.extend(lines(2, start=3))
    assert path.read_bytes().count(b"\n") == 5
    assert [r["index"] for r in AppendLog(path)] == [0, 1, 2, 3, 4]
    # bytes after the last newline are never a record, even when they parse
    path.write_bytes(b'{"index": 0}\n{"index": 1}')
    assert [r["index"] for r in AppendLog(path)] == [0]
    assert path.read_bytes() == b'{"index": 0}\n'
    # a file that is one torn line becomes empty, and appending starts at its first line
    path.write_bytes(b'{"ind')
    log = AppendLog(path)
    assert log.records == [] and path.read_bytes() == b""
    log.append({"index": 9})
    assert path.read_bytes() == b'{"index": 9}\n'


def test_each_append_batch_is_one_write_and_one_fsync(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "new" / "log.jsonl"
    log = AppendLog(path)  # no file yet: nothing is created until the first append
    assert not path.exists() and synced == []
    log.append({"index": 0})
    assert len(synced) == 2  # the file, then its folder (a new name is made durable too)
    log.extend(lines(3, start=1))
    log.append({"index": 4})
    assert len(synced) == 4  # one per append batch after that
    log.extend([])
    assert len(synced) == 4
    assert [r["index"] for r in AppendLog(path)] == [0, 1, 2, 3, 4]


def test_a_failed_write_is_cut_back_and_the_records_before_are_kept(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = AppendLog(path)
    log.extend(lines(2))
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[:7]))  # part of the batch reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        log.extend(lines(2, start=2))
    monkeypatch.setattr(os, "write", real_write)
    assert [r["index"] for r in log] == [0, 1]
    assert [r["index"] for r in AppendLog(path)] == [0, 1]
    assert path.read_bytes().endswith(b"\n")


def test_records_that_cannot_be_one_line_are_refused_before_writing(tmp_path):
    path = tmp_path / "log.jsonl"
    log = AppendLog(path, required=("index",))
    with pytest.raises(ValueError, match="needs keys"):
        log.append({"text": "no index"})
    with pytest.raises(ValueError, match="one line"):
        AppendLog(path, dumps=lambda r: json.dumps(r, indent=1)).append({"index": 0})
    assert not path.exists()


def test_scan_log_counts_bytes_exactly():
    data = b'{"a": 1}\nnot json\n{"a": 2}\n{"a": 3'
    scan = scan_log(data)
    assert [r["a"] for r in scan.records] == [1, 2] and scan.damaged == [2]
    assert scan.complete == data.rindex(b"\n") + 1 and scan.torn == len(b'{"a": 3')
    deep = b"[" * 100_000 + b"\n"  # too deep for the parser: damaged, not a crash
    assert scan_log(deep).damaged == [1]


def test_study_rollouts_keep_every_record_after_a_damaged_line(tmp_path):
    from emovec.studies import load_rollouts

    path = tmp_path / "rollouts.jsonl"
    records = [{"condition": "unsteered", "index": i, "reply": "r"} for i in range(5)]
    write_log(path, records)
    raw = path.read_bytes().split(b"\n")
    raw[2] = raw[2][:-5]  # the third record loses its end: a damaged middle line
    path.write_bytes(b"\n".join(raw) + b'{"condition": "unst')
    with pytest.warns(DamagedLogWarning, match="line 3"):
        kept = load_rollouts(path)
    assert [r["index"] for r in kept] == [0, 1, 3, 4]
    with pytest.warns(DamagedLogWarning):
        assert load_rollouts(path, repair=True) == kept
    assert path.read_bytes().endswith(b"}\n")  # the torn tail was cut by the repair


def test_write_atomic_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "out" / "report.html"
    write_atomic(path, "old")
    assert path.read_text() == "old" and oct(path.stat().st_mode & 0o777) == "0o644"

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="I/O"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # no temp left
