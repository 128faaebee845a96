"""Token events and the JSONL trace: one header, a line per reply token, a line per reply.

:class:`TokenEvent` is what a live monitor delivers for each reply token; :class:`TraceWriter`
appends events and reply summaries to a file a crash cannot lose much of, and
:func:`read_trace` reads one back, checking every record, so that whatever the file holds
the result is a :class:`Trace` or one :class:`~emovec.monitor.MonitorError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovec.monitor.checks import is_count, is_score, strict_json
from emovec.monitor.errors import MonitorError
from emovec.monitor.rules import Alert

#: decimals of raw scores (cosines) in records: z derived from them is off by < 1e-4
#: for any baseline spread above 0.005
RAW_DIGITS = 6


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    """Python floats with short JSON forms; one vectorised call, as it runs for every token."""
    return np.round(values.astype(np.float64), digits).tolist()


@dataclass
class TokenEvent:
    """One reply token, delivered as soon as its scores exist."""

    row: int
    index: int
    position: int
    token_id: int
    piece: str
    raw: np.ndarray
    z: np.ndarray
    emotions: list[str]
    fired: list[Alert] = field(default_factory=list)
    active: list[str] = field(default_factory=list)

    @property
    def top(self) -> tuple[str, float]:
        """The emotion with the highest z at this token."""
        i = int(np.argmax(self.z))
        return self.emotions[i], float(self.z[i])

    def to_record(self, with_z: bool = True) -> dict[str, Any]:
        """This token as a JSON record; ``with_z=False`` is the trace's form.

        A trace stores raw scores only, as its header holds the baseline that turns them into
        z-scores (:func:`read_trace` adds them back): with 171 emotions, writing both doubled
        the cost of the largest per-token item.
        """
        record = {
            "type": "token",
            "row": self.row,
            "index": self.index,
            "position": self.position,
            "token_id": self.token_id,
            "piece": self.piece,
            "raw": dict(zip(self.emotions, _rounded(self.raw, RAW_DIGITS), strict=True)),
            "alerts": [a.rule.name for a in self.fired],
            "active": self.active,
        }
        if with_z:
            record["z"] = dict(zip(self.emotions, _rounded(self.z, 3), strict=True))
        return record


class TraceWriter:
    """Appends one JSON line per record; a crash loses at most ``flush_every_s`` of tokens.

    Header and reply records are written and flushed at once. Token events are kept and
    turned into lines together at most every ``flush_every_s`` seconds (and on close): one
    line per token right after each decode step cost several times more, as the forward pass
    leaves every cache cold, and a flush per token cost more than all other per-token work.
    """

    def __init__(
        self, path: str | Path, meta: Mapping[str, Any], flush_every_s: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_every_s = flush_every_s
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._pending: list[TokenEvent] = []
        self._flushed = time.monotonic()
        self.write({"type": "meta", **meta})

    def write(self, record: Mapping[str, Any]) -> None:
        """Write a record now, after any pending tokens, and flush."""
        self._file.write(self._lines() + json.dumps(record, ensure_ascii=False) + "\n")
        self._flush()

    def token(self, event: TokenEvent) -> None:
        """Queue a token's record; written with the others once ``flush_every_s`` has passed."""
        self._pending.append(event)
        if time.monotonic() - self._flushed >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write every pending token record and flush the file."""
        self._file.write(self._lines())
        self._flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def _lines(self) -> str:
        pending, self._pending = self._pending, []
        return "".join(
            json.dumps(e.to_record(with_z=False), ensure_ascii=False) + "\n" for e in pending
        )

    def _flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()


@dataclass
class Trace:
    """A trace file read back: header, token records, and one reply record per row."""

    meta: dict[str, Any]
    tokens: list[dict[str, Any]]
    replies: list[dict[str, Any]]

    def row(self, row: int = 0) -> list[dict[str, Any]]:
        return [t for t in self.tokens if t["row"] == row]


def read_trace(path: str | Path, max_records: int = 200_000) -> Trace:
    """Read a JSONL trace; a damaged line is a clear error naming its line number.

    A last line cut short (the writer was killed, or the file was copied while being written)
    is dropped and everything before it is read; damage anywhere else is a
    :class:`MonitorError`, as is every record of the wrong shape: whatever the file holds,
    the result is a :class:`Trace` or one :class:`MonitorError`.
    """
    path = Path(path)
    meta: dict[str, Any] | None = None
    tokens: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if number > max_records:
                    raise MonitorError(f"{path} has more than {max_records} records")
                torn = not line.endswith(b"\n")  # only the last line can lack its newline
                try:
                    text = line.decode("utf-8")
                    if not text.strip():
                        continue
                    record = _parse_record(text)
                except UnicodeDecodeError:
                    if torn:
                        break
                    raise MonitorError(f"{path} line {number} is not UTF-8 text") from None
                except ValueError:
                    if torn:
                        break
                    raise MonitorError(f"{path} line {number} is not a trace record") from None
                where = f"{path} line {number}"
                kind = record["type"]
                if kind == "meta":
                    if meta is not None:
                        raise MonitorError(f"{where} is a second trace header")
                    meta = _check_trace_meta(where, record)
                elif kind in ("token", "reply"):
                    if meta is None:
                        raise MonitorError(
                            f"{where} comes before the trace header: not an emovec monitor trace"
                        )
                    if kind == "token":
                        tokens.append(_check_token(where, record, meta["emotions"]))
                    else:
                        replies.append(_check_reply(where, record))
    except FileNotFoundError:
        raise MonitorError(f"trace file not found: {path}") from None
    except OSError as exc:
        raise MonitorError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    if meta is None:
        raise MonitorError(f"{path} has no trace header: not an emovec monitor trace")
    _add_z(path, meta, tokens)
    return Trace(meta, tokens, replies)


def _parse_record(text: str) -> dict[str, Any]:
    """One trace line as a record with a string ``type``; ValueError if it is none (the
    reader reports it with the line number)."""
    try:
        record = strict_json(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise ValueError("not a trace record")
    return record


def _scores_of(value: Any, emotions: list[str]) -> bool:
    """Whether ``value`` maps every one of ``emotions`` to a number."""
    if not isinstance(value, dict):
        return False
    try:
        return all(is_score(value[e]) for e in emotions)
    except (KeyError, TypeError):
        return False


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def _check_trace_meta(where: str, record: dict[str, Any]) -> dict[str, Any]:
    """The trace header: its emotions, and the baseline that turns raw scores into z."""
    emotions = record.get("emotions")
    if not _is_list_of(emotions, str) or not emotions or len(set(emotions)) != len(emotions):
        raise MonitorError(f"{where}: the header's 'emotions' must be a list of unique names")
    baseline = record.get("baseline")
    if baseline is not None:
        if not (
            isinstance(baseline, dict)
            and _scores_of(baseline.get("mean"), emotions)
            and _scores_of(baseline.get("std"), emotions)
        ):
            raise MonitorError(
                f"{where}: the header's baseline needs a mean and a std (numbers) per emotion"
            )
        if not all(baseline["std"][e] > 0 for e in emotions):
            raise MonitorError(f"{where}: the header's baseline std must be positive")
    if "layer" in record and not is_count(record["layer"]):
        raise MonitorError(f"{where}: the header's 'layer' must be an integer >= 0")
    for key, kind in (("model", str), ("rules", list), ("hidden", dict)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise MonitorError(f"{where}: the header's {key!r} must be a {kind.__name__}")
    return record


def _check_token(where: str, record: dict[str, Any], emotions: list[str]) -> dict[str, Any]:
    """A token record: row, index, piece and a raw score (and maybe a z) per emotion."""
    for key in ("row", "index"):
        if not is_count(record.get(key)):
            raise MonitorError(f"{where}: token {key!r} must be an integer >= 0")
    for key in ("position", "token_id"):
        if key in record and not is_count(record[key]):
            raise MonitorError(f"{where}: token {key!r} must be an integer >= 0")
    if not isinstance(record.get("piece"), str):
        raise MonitorError(f"{where}: token 'piece' must be a string")
    if not _scores_of(record.get("raw"), emotions):
        raise MonitorError(f"{where}: token 'raw' must hold a number for every emotion")
    if "z" in record and not _scores_of(record["z"], emotions):
        raise MonitorError(f"{where}: token 'z' must hold a number for every emotion")
    for key in ("alerts", "active"):
        if key in record and not _is_list_of(record[key], str):
            raise MonitorError(f"{where}: token {key!r} must be a list of rule names")
    return record


def _check_reply(where: str, record: dict[str, Any]) -> dict[str, Any]:
    """A reply record: its row, and the right types for the fields that readers use."""
    if not is_count(record.get("row")):
        raise MonitorError(f"{where}: reply 'row' must be an integer >= 0")
    if "n_tokens" in record and not is_count(record["n_tokens"]):
        raise MonitorError(f"{where}: reply 'n_tokens' must be an integer >= 0")
    kinds = {
        "prompt": str,
        "text": str,
        "stopped_by": str,
        "steering": dict,
        "sampling": dict,
        "alerts": list,
        "hidden": list,
    }
    for key, kind in kinds.items():
        if key in record and not isinstance(record[key], kind):
            raise MonitorError(f"{where}: reply {key!r} must be a {kind.__name__}")
    for key in ("alerts", "hidden"):
        if key in record and not all(isinstance(a, dict) for a in record[key]):
            raise MonitorError(f"{where}: reply {key!r} must be a list of records")
    return record


def _add_z(path: Path, meta: Mapping[str, Any], tokens: list[dict[str, Any]]) -> None:
    """Give token records without z-scores their z, from the raw scores and the header.

    Records and header were checked by :func:`read_trace`: every token has a number per
    emotion, and a baseline, when present, a mean and a positive std per emotion.
    """
    missing = [(number, t) for number, t in enumerate(tokens, 1) if "z" not in t]
    if not missing:
        return
    baseline = meta.get("baseline")
    if baseline is None:
        raise MonitorError(
            f"{path}: the header lacks what z-scores need (baseline, emotions, raw scores): "
            f"token record {missing[0][0]} has raw scores only and there is no baseline"
        )
    emotions = list(meta["emotions"])
    mean = np.array([baseline["mean"][e] for e in emotions], dtype=np.float64)
    std = np.array([baseline["std"][e] for e in emotions], dtype=np.float64)
    for number, record in missing:
        raw = np.array([record["raw"][e] for e in emotions], dtype=np.float64)
        with np.errstate(all="ignore"):
            z = (raw - mean) / std
        if not np.isfinite(z).all():
            raise MonitorError(
                f"{path}: token record {number}: its z-scores are out of range "
                "(raw scores or baseline std are not plausible)"
            )
        record["z"] = dict(zip(emotions, _rounded(z, 3), strict=True))
