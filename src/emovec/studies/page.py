"""A study folder's figures and its self-contained page: the rate plot, the trajectory plot,
result.json and index.html, each written atomically."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emovec.files import write_atomic
from emovec.studies.grader_check import RELIABLE
from emovec.studies.summary import RATE_FIGURE

#: The trajectory figure of a study folder (drawn by :func:`plot_trajectory`).
TRAJECTORY_FIGURE = "trajectory.png"
TRAJECTORY_CAPTION = "Emotions across repeated attempts at impossible coding tasks."


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically (a crash leaves the old figure)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return write_atomic(path, buffer.getvalue())


def plot_rates(summary: dict[str, Any], path: Path) -> Path:
    """Rate vs steering strength, one line per emotion, 95% Wilson bars; the study's numbers
    as hollow markers. The unsteered rate sits at strength 0 on every line."""
    plt = _pyplot()
    conditions = [c for c in summary["conditions"] if c["n"]]
    base = next((c for c in conditions if c["emotion"] is None or c["strength"] == 0), None)
    emotions = sorted({c["emotion"] for c in conditions if c["emotion"] and c["strength"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, emotion in enumerate(emotions or [None]):
        colour = colours[i % len(colours)]
        points = [c for c in conditions if c["emotion"] == emotion and c["strength"]]
        if base is not None:
            points.append(base)
        points.sort(key=lambda c: c["strength"])
        if points:
            # a small sideways offset per emotion keeps overlapping error bars apart
            span = max((abs(c["strength"]) for c in conditions), default=0.0) or 1.0
            shift = (i - (len(emotions) - 1) / 2) * 0.012 * span
            x = [c["strength"] + shift for c in points]
            y = [c["rate"] for c in points]
            err = [
                [c["rate"] - c["ci95"][0] for c in points],
                [c["ci95"][1] - c["rate"] for c in points],
            ]
            ax.errorbar(
                x, y, yerr=err, marker="o", capsize=3, color=colour, label=emotion or "unsteered"
            )
        refs = [
            r
            for r in summary["reference"].get("rates", [])
            if r.get("emotion") == emotion or (r.get("emotion") is None and emotion is not None)
        ]
        if refs:
            ax.scatter(
                [r["strength"] for r in refs],
                [r["rate"] for r in refs],
                facecolors="none",
                edgecolors=colour,
                s=80,
                marker="s",
                label=f"{emotion}: paper" if emotion else "paper",
            )
    ax.set_xlabel("steering strength (fraction of residual norm)")
    ax.set_ylabel("rate (95% Wilson interval)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{summary['scenario']}: rate vs steering strength")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    return _save_png(fig, path)


def plot_trajectory(result: dict[str, Any], path: Path) -> Path:
    """Emotion readings per attempt (mean over tasks): solid at reply start, dashed over reply."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, emotion in enumerate(result["emotions"]):
        colour = colours[i % len(colours)]
        start = result["mean"]["at_reply_start"][emotion]
        over = result["mean"]["mean_over_reply"][emotion]
        xs = list(range(1, len(start) + 1))
        ax.plot(xs, start, marker="o", color=colour, label=f"{emotion} (reply start)")
        ax.plot(xs, over, ls="--", color=colour, label=f"{emotion} (mean over reply)")
    ax.set_xticks(range(1, 1 + max(len(v) for v in result["mean"]["at_reply_start"].values())))
    ax.set_xlabel("attempt (after failing test output)")
    ax.set_ylabel("cosine with emotion vector")
    ax.set_title(f"emotions across attempts ({result['condition']})")
    ax.legend(fontsize=7)
    return _save_png(fig, path)


def write_outputs(out: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
    """result.json, the rate plot and index.html, each written atomically (a trajectory run
    into the same folder is listed as a figure, so that the report shows it too)."""
    figures = summary.setdefault("figures", [])
    if (out / TRAJECTORY_FIGURE).exists() and all(
        f.get("file") != TRAJECTORY_FIGURE for f in figures
    ):
        figures.append({"file": TRAJECTORY_FIGURE, "caption": TRAJECTORY_CAPTION})
    write_atomic(out / "result.json", json.dumps(summary, indent=1))
    plot_rates(summary, out / RATE_FIGURE)
    write_atomic(out / "index.html", render_page(summary, records, out))


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{100 * rate:.0f}%"


def render_page(summary: dict[str, Any], records: Sequence[dict[str, Any]], out: Path) -> str:
    """One self-contained HTML page: our rates beside the study's, the figure, sample replies."""
    esc = html.escape
    rows = []
    for c in summary["conditions"]:
        judge = c.get("judge")
        judge_cell = f"{_pct(judge['rate'])} (n={judge['n']})" if judge and judge["n"] else ""
        if judge and judge.get("failed"):
            judge_cell = f"{judge_cell} failed on {judge['failed']}".strip()
        labels = ", ".join(f"{k} {v}" for k, v in sorted(c["labels"].items()))
        change = c.get("change_vs_unsteered")
        shift = (
            f"{100 * change['difference']:+.0f} points ({100 * change['ci95'][0]:+.0f} to "
            f"{100 * change['ci95'][1]:+.0f})"
            if change
            else ""
        )
        rows.append(
            f"<tr><td>{esc(c['condition'])}</td><td>{c['n']}</td><td>{_pct(c['rate'])}</td>"
            f"<td>{_pct(c['ci95'][0])} – {_pct(c['ci95'][1])}</td><td>{shift}</td>"
            f"<td>{_pct(c['paper_rate'])}</td><td>{esc(judge_cell)}</td>"
            f"<td>{esc(labels)}</td></tr>"
        )
    samples = []
    for c in summary["conditions"]:
        mine = [r for r in records if r["condition"] == c["condition"]][:2]
        for r in mine:
            samples.append(
                f"<details><summary>{esc(c['condition'])} · rollout {r['index']} · "
                f"{esc(r['item'])} · {esc(r['label'])}</summary><pre>{esc(r['reply'])}</pre>"
                "</details>"
            )
    ref = summary["reference"]
    model = summary.get("model", {}).get("name", "")
    measured = summary.get("rule_accuracy") or {}
    grader_note = (
        f"<p>The rule grader agrees with hand labels on {_pct(measured['accuracy'])} of "
        f"{measured['n']} replies ({esc(measured.get('labels', ''))}). "
        + (
            "<b>It is unreliable for this study: the LLM judge's column is the headline rate.</b>"
            if summary.get("headline") == "judge"
            else "<b>It is unreliable for this study: run with an LLM judge.</b>"
            if measured["accuracy"] < RELIABLE
            else ""
        )
        + "</p>"
        if measured
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>emovec study: {esc(summary["scenario"])}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5rem}}</style></head><body>
<h1>Study: {esc(summary["scenario"])}</h1>
<p>{esc(summary["description"])}</p>
<p>Model <b>{esc(model)}</b>; steering layer {summary.get("steer_layer")};
{summary["rollouts_per_condition"]} rollouts per condition, {summary["max_new_tokens"]} new
tokens, temperature {summary["temperature"]}; grader <code>{esc(summary["grader"])}</code>.
{"" if summary["complete"] else "<b>Incomplete: the study has not finished.</b>"}</p>
<table><tr><th>condition</th><th>n</th><th>rate (ours)</th><th>95% Wilson</th>
<th>change vs unsteered (95%, Newcombe)</th>
<th>paper</th><th>LLM judge</th><th>labels</th></tr>{"".join(rows)}</table>
{grader_note}<p><small>Paper: {esc(ref.get("source", ""))}</small></p>
{_img(out / RATE_FIGURE)}
{_img(out / TRAJECTORY_FIGURE)}
<h2>Sample replies</h2>{"".join(samples)}
</body></html>"""
