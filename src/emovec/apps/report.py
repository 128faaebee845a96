"""One self-contained HTML page from result folders (plots inlined, no network).

Any folder under the root holding a ``result.json`` in the section protocol of
:mod:`emovec.experiments.result` becomes a section, ordered by its ``order`` key; experiments,
behavioural case studies and the monitor all plug in the same way.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from emovec import __version__
from emovec.errors import InputError
from emovec.experiments.result import load_result
from emovec.files import write_atomic

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.summary{background:#f7f7fb;padding:.6em .8em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}nav li{margin:.1em 0}
"""


def find_sections(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every result folder under ``root`` (``root`` itself included), in report order."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"no such folder: {root}; give the folder that holds result folders")
    found = []
    for path in sorted(root.rglob("result.json")):
        try:
            found.append((path.parent, load_result(path.parent)))
        except InputError:
            continue  # not ours: a JSON file that merely shares the name
    if not found:
        raise InputError(
            f"no result folders under {root}: run `emovec experiment ...` or `emovec run` first"
        )
    return sorted(found, key=lambda item: (item[1].get("order", 50), str(item[0])))


def _cell(value: Any) -> str:
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(columns: list[str], rows: list[list[Any]], title: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    caption = f"<h4>{html.escape(title)}</h4>" if title else ""
    return f"{caption}<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def render_section(folder: Path, data: dict[str, Any], anchor: str) -> str:
    """One result folder as an HTML section (figures inlined) under the id ``anchor``."""
    parts = [f'<h2 id="{anchor}">{html.escape(data["title"])}</h2>']
    if data.get("summary"):
        parts.append(f'<p class="summary">{html.escape(data["summary"])}</p>')
    if data.get("comparison"):
        rows = [
            [c.get("measure"), c.get("ours"), c.get("study"), c.get("note", "")]
            for c in data["comparison"]
        ]
        parts.append(_table(["measure", "ours", "study", "note"], rows, "Ours beside the study"))
    for fig in data.get("figures", []):
        path = folder / fig["file"]
        img = _image(path) if path.is_file() else f"<em>missing figure {fig['file']}</em>"
        parts.append(
            f"<figure>{img}<figcaption>{html.escape(fig.get('caption', ''))}</figcaption></figure>"
        )
    for table in data.get("tables", []):
        parts.append(_table(table["columns"], table["rows"], table.get("title", "")))
    if data.get("settings"):
        settings = html.escape(json.dumps(data["settings"], indent=1, ensure_ascii=False))
        parts.append(f"<details><summary>settings</summary><pre>{settings}</pre></details>")
    return "\n".join(parts)


#: How a model identity (``LanguageModel.identity()``, a vector file's ``model``) is shown.
MODEL_ROWS = (
    ("name", "model"),
    ("architecture", "architecture"),
    ("n_layers", "layers"),
    ("d_model", "d_model"),
    ("fingerprint", "fingerprint"),
)


def _shown(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float) else json.dumps(value)


def context_rows(context: dict[str, Any]) -> list[list[Any]]:
    """The page header's rows: a model identity as readable rows (model, architecture, layers,
    d_model, fingerprint), any other mapping one row per key, the rest as they are."""
    rows: list[list[Any]] = []
    for key, value in context.items():
        if key == "model" and isinstance(value, dict):
            model = dict(value)
            for field, label in MODEL_ROWS:
                if field in model:
                    shown = model.pop(field)
                    if field == "architecture" and model.get("model_type"):
                        shown = f"{shown} ({model.pop('model_type')})"
                    rows.append([label, _shown(shown)])
            rows += [[f"model {k}", _shown(v)] for k, v in model.items()]
        elif isinstance(value, dict):
            rows += [[f"{key} {k}", _shown(v)] for k, v in value.items()]
        else:
            rows.append([key, _shown(value)])
    return rows


def build_report(
    root: str | Path,
    out: str | Path | None = None,
    title: str = "emovec report",
    context: dict[str, Any] | None = None,
) -> Path:
    """Write the HTML page (default ``root/report.html``) and return its path.

    ``context`` (model, vector file, ...) is shown at the top with the library version.
    """
    root = Path(root)
    sections = find_sections(root)
    out = Path(out) if out is not None else root / "report.html"
    context = {
        "emovec": __version__,
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **(context or {}),
    }
    nav = "".join(
        f'<li><a href="#s{i}">{html.escape(d["title"])}</a></li>'
        for i, (_, d) in enumerate(sections)
    )
    body = "\n".join(render_section(folder, d, f"s{i}") for i, (folder, d) in enumerate(sections))
    ctx = _table(["", ""], context_rows(context))
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{ctx}<p>Study figures are from Sofroniew et al. 2026 "
        "(Claude Sonnet 4.5); compare signs, orders and correlations, not absolute values."
        f"</p><nav><ol>{nav}</ol></nav>{body}</body></html>"
    )
    return write_atomic(out, page)  # a kill or a full disk never leaves half a page
