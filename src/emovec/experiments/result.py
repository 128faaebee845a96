"""The result of one experiment: a folder with ``result.json`` and PNG figures.

``result.json`` is also the report's section protocol: any folder holding one (written by an
experiment here, or by any other part of emovec) becomes a section of ``emovec report``. Keys:

- ``format``: ``"emovec.result/1"``; ``name``, ``title``, ``summary`` (one paragraph);
- ``order``: where the section goes in the report (lower first);
- ``comparison``: rows ``{measure, ours, study, note}``, our figure beside the study's;
- ``figures``: ``{file, caption}`` with ``file`` relative to the folder;
- ``tables``: ``{title, columns, rows}``;
- ``settings``: every parameter the run used; ``metrics``/``data``: the numbers themselves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emovec.errors import InputError
from emovec.files import atomic_path, write_atomic

FORMAT = "emovec.result/1"


def _plain(value: Any) -> Any:
    """JSON-able copy: numpy scalars/arrays to Python, NaN/inf to None, floats rounded."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a crash never leaves half a file under ``path``)."""
    write_atomic(path, json.dumps(_plain(data), indent=1, ensure_ascii=False))


@dataclass
class Result:
    """What an experiment found, in the shape the report renders."""

    name: str
    title: str
    summary: str = ""
    order: int = 50
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[dict[str, str]] = field(default_factory=list)
    _pending: list[tuple[Any, str]] = field(default_factory=list, repr=False)

    def compare(self, measure: str, ours: Any, study: Any = None, note: str = "") -> None:
        """One row of 'our figure beside the study's' (``study=None``: the study has none)."""
        self.comparison.append({"measure": measure, "ours": ours, "study": study, "note": note})

    def add_table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def add_figure(self, fig: Any, file: str, caption: str) -> None:
        """Keep a matplotlib figure; :meth:`save` writes it as ``file`` (PNG) and closes it."""
        self._pending.append((fig, file))
        self.figures.append({"file": file, "caption": caption})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "order": self.order,
            "comparison": self.comparison,
            "figures": self.figures,
            "tables": self.tables,
            "settings": self.settings,
            "metrics": self.metrics,
            "data": self.data,
        }

    def save(self, folder: str | Path) -> Path:
        """Write figures then ``result.json`` into ``folder``; returns the folder."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for fig, file in self._pending:
            with atomic_path(folder / file) as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(file).suffix[1:])
            plt.close(fig)
        self._pending.clear()
        write_json(folder / "result.json", self.to_dict())
        return folder


def load_result(folder: str | Path) -> dict[str, Any]:
    """Read a folder's ``result.json`` and check it follows the section protocol."""
    path = Path(folder) / "result.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a readable result file: {exc}") from exc
    if data.get("format") != FORMAT or "title" not in data:
        raise InputError(f"{path} is not an emovec result (format {FORMAT!r} with a title)")
    return data


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
