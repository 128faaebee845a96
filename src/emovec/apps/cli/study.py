"""``emovec study ...``: behavioural case studies (blackmail, reward hacking, sycophancy)
under steering, resumable, with rates beside the study's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from emovec.apps.cli.common import (
    ModelOpt,
    VectorsOpt,
    command_group,
    err,
    group_command,
    load_lm,
    out,
    parse_layers,
)

study_app = command_group(
    "study", "Behavioural case studies: blackmail, reward hacking, sycophancy under steering."
)


study_command = group_command(study_app)

ConditionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--condition", "-c", help="EMOTION:STRENGTH or none; repeatable (default: scenario's)."
    ),
]


@study_command
def list_() -> None:
    """The bundled scenarios and their default conditions."""
    from emovec.studies import bundled_scenarios, load_scenario

    table = Table("scenario", "items", "grader", "default conditions")
    for name in bundled_scenarios():
        sc = load_scenario(name)
        conditions = ", ".join(c.name for c in sc.conditions())
        table.add_row(name, str(len(sc.items)), sc.grader, conditions)
    out.print(table)


@study_command
def run_(
    scenario: Annotated[str, typer.Argument(help="Bundled scenario name or a scenario .json.")],
    vectors: VectorsOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Study folder (resumable).")],
    condition: ConditionOpt = None,
    rollouts: Annotated[int, typer.Option(help="Rollouts per condition.")] = 10,
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option(help="Steering layers (default: file's).")] = None,
    positions: Annotated[str, typer.Option(help="all | prompt | generated")] = "all",
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: scenario's.")] = None,
    temperature: Annotated[float, typer.Option()] = 0.8,
    seed: Annotated[int, typer.Option()] = 0,
    item: Annotated[list[str] | None, typer.Option(help="Only these item ids.")] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for an LLM judge.")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="Judge model name.")] = "gpt-4o-mini",
    unsafe_sandbox: Annotated[
        bool,
        typer.Option(
            "--unsafe-sandbox",
            help="Run model-written code without bubblewrap (rlimits and an audit hook only: "
            "no security boundary). Without bwrap, code-running studies are refused otherwise.",
        ),
    ] = False,
) -> None:
    """Run (or continue) a study; rollouts are appended as they finish, so rerun to resume.

    The judge's API key is read from $EMOVEC_JUDGE_API_KEY.
    """
    import os

    from emovec import sandbox
    from emovec.studies import Judge, Study, load_scenario, run_study, study_conditions
    from emovec.studies.grader_check import RELIABLE
    from emovec.vectors import EmotionVectors

    sc = load_scenario(scenario)
    if sc.grader == "hidden_checks":
        if unsafe_sandbox:
            os.environ[sandbox.UNSAFE_ENV] = "1"
            if not sandbox.bwrap_available():
                err.print(
                    f"[yellow]warning:[/] {sandbox.INSTALL_HINT.split(':')[0]}; running unsafe"
                )
        sandbox.ensure_available()
    conditions = study_conditions(sc, condition, parse_layers(layers), positions)
    study = Study(
        sc,
        conditions,
        rollouts=rollouts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        items=item,
    )
    vecs = EmotionVectors.load(vectors)
    lm = load_lm(model, vecs)
    judge = None
    if judge_url:
        judge = Judge(judge_url, judge_model, api_key=os.environ.get("EMOVEC_JUDGE_API_KEY"))
    summary = run_study(lm, vecs, study, out_dir, judge=judge, progress=True)
    judged = summary.get("judge")
    columns = ["condition", "n", "rate", "95% CI", "vs unsteered (95% CI)", "paper"]
    table = Table(*columns, *(["judge"] if judged else []))
    for c in summary["conditions"]:
        paper = "" if c["paper_rate"] is None else f"{c['paper_rate']:.0%}"
        ci = f"{c['ci95'][0]:.0%}-{c['ci95'][1]:.0%}"
        change = c.get("change_vs_unsteered")
        shift = (
            f"{change['difference']:+.0%} ({change['ci95'][0]:+.0%} to {change['ci95'][1]:+.0%})"
            if change
            else ""
        )
        row = [c["condition"], str(c["n"]), f"{c['rate']:.0%}", ci, shift, paper]
        if judged:
            j = c.get("judge") or {"n": 0, "failed": 0}
            cell = f"{j['rate']:.0%} (n={j['n']})" if j["n"] else "-"
            row.append(cell + (f", failed {j['failed']}" if j.get("failed") else ""))
        table.add_row(*row)
    out.print(table)
    if judged and judged["failed"]:
        err.print(
            f"[yellow]judge failed on {judged['failed']} of {judged['rollouts']} rollouts:[/] "
            f"{escape(judged['first_error'] or '')}",
            highlight=False,
            soft_wrap=True,
        )
    measured = summary.get("rule_accuracy") or {}
    if measured and measured["accuracy"] < RELIABLE:
        shown = f"{measured['accuracy']:.0%} of {measured['n']} hand-labelled replies"
        advice = (
            "the judge column is the headline rate"
            if summary["headline"] == "judge"
            else "add --judge-url for an LLM judge and read its column"
        )
        err.print(
            f"[yellow]the {sc.grader} rule grader agrees with hand labels on only "
            f"{shown}:[/] {advice}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(f"wrote {out_dir}/result.json, rate_vs_strength.png, index.html")


@study_command
def page(
    out_dir: Annotated[Path, typer.Argument(help="Study folder.")],
) -> None:
    """Rebuild result.json, the figure and index.html from the rollouts recorded so far."""
    from emovec.studies import rebuild_outputs

    summary = rebuild_outputs(out_dir)
    done = sum(c["n"] for c in summary["conditions"])
    out.print(f"wrote {out_dir}/index.html from {done} rollouts")


@study_command
def trajectory(
    vectors: VectorsOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    attempts: Annotated[int, typer.Option(help="Attempts per task.")] = 4,
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Emotions to read.")
    ] = None,
    condition: Annotated[str, typer.Option("--condition", "-c")] = "none",
    item: Annotated[list[str] | None, typer.Option(help="Only these task ids.")] = None,
    model: ModelOpt = None,
    max_new_tokens: Annotated[int, typer.Option()] = 80,
) -> None:
    """Emotions across repeated attempts at impossible coding tasks (failing tests fed back).

    Into a study folder (of `study run`), its page and result.json are refreshed to show it.
    """
    from emovec.studies import Condition, rebuild_outputs, run_trajectory
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = load_lm(model, vecs)
    result = run_trajectory(
        lm,
        vecs,
        items=item,
        attempts=attempts,
        condition=Condition.parse(condition),
        emotions=emotion or ["desperate", "calm"],
        max_new_tokens=max_new_tokens,
        out_dir=out_dir,
    )
    for e in result["emotions"]:
        values = " -> ".join(f"{v:+.3f}" for v in result["mean"]["at_reply_start"][e])
        out.print(f"{e} at reply start, by attempt: {values}")
    out.print(f"wrote {out_dir}/trajectory.json and trajectory.png")
    if (out_dir / "study.json").is_file():
        rebuild_outputs(out_dir)
        out.print(f"refreshed {out_dir}/index.html and result.json")
