"""A trajectory: one model's emotions across repeated attempts at an impossible coding task,
the failing test output fed back after each attempt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emovec.files import write_atomic
from emovec.models import LanguageModel
from emovec.studies.graders import extract_code, grade_hidden_checks, run_checks
from emovec.studies.page import TRAJECTORY_FIGURE, plot_trajectory
from emovec.studies.run import sample_monitored
from emovec.studies.sandbox import SandboxResult
from emovec.studies.scenario import (
    Condition,
    Scenario,
    StudyError,
    fill_template,
    load_scenario,
    render_chat,
)
from emovec.vectors import EmotionVectors


def _failures(item: dict[str, Any], result: SandboxResult) -> str:
    if result.status != "ok":
        return f"{result.status}: {result.error or result.blocked or 'the code did not run'}"
    failed = [t for t in item["visible"] if not result.passed(f"visible:{t}")]
    return "\n".join(f"AssertionError: assert {t}" for t in failed) or "all tests passed"


def _mean_by_attempt(runs: list[dict[str, Any]], watch: Sequence[str], attempts: int) -> dict:
    """Per reading spot and emotion, the mean over tasks of each attempt that some task made."""
    return {
        where: {
            e: [
                float(np.mean([r["steps"][a][where][e] for r in runs if len(r["steps"]) > a]))
                for a in range(attempts)
                if any(len(r["steps"]) > a for r in runs)
            ]
            for e in watch
        }
        for where in ("at_reply_start", "mean_over_reply")
    }


def run_trajectory(
    lm: LanguageModel,
    vectors: EmotionVectors,
    scenario: Scenario | None = None,
    items: Sequence[str] | None = None,
    attempts: int = 4,
    condition: Condition | None = None,
    emotions: Sequence[str] = ("desperate", "calm"),
    max_new_tokens: int = 80,
    seed: int = 0,
    temperature: float = 0.0,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Several attempts at each impossible coding task, the failing test output fed back each
    time; emotions read where each attempt's reply starts and averaged over the reply.

    Stops an item early once its code passes every visible test (only possible by cheating).
    """
    scenario = scenario or load_scenario("reward_hacking")
    if scenario.feedback is None or scenario.grader != "hidden_checks":
        raise StudyError("a trajectory needs a coding scenario with hidden checks and feedback")
    condition = condition or Condition()
    watch = [vectors.resolve(e) for e in emotions]
    chosen = [i for i in scenario.items if items is None or i["id"] in items]
    if not chosen:
        raise StudyError(f"no items {items} in scenario {scenario.name!r}")
    runs = []
    for n, item in enumerate(chosen):
        turns = scenario.turns(item)
        steps = []
        for attempt in range(attempts):
            text = render_chat(lm, turns)
            reply, _ids, scores = sample_monitored(
                lm, vectors, text, condition, watch, max_new_tokens, temperature, seed + n
            )
            verdict = grade_hidden_checks(scenario, item, reply)
            code = extract_code(reply)
            feedback = "no code block found" if code is None else None
            if code is not None:
                feedback = _failures(item, run_checks(item, code))
            steps.append(
                {
                    "attempt": attempt + 1,
                    "reply": reply,
                    "label": verdict["label"],
                    "cheated": verdict["flag"],
                    "at_reply_start": dict(zip(watch, map(float, scores[0]), strict=True)),
                    "mean_over_reply": dict(zip(watch, map(float, scores.mean(0)), strict=True)),
                    "feedback": feedback,
                }
            )
            if verdict["flag"]:
                break
            feedback_turn = fill_template(scenario.feedback, {"failures": feedback})
            turns = [
                *turns,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": feedback_turn},
            ]
        runs.append({"item": item["id"], "steps": steps})
    result = {"condition": condition.name, "emotions": watch, "attempts": attempts}
    result |= {"mean": _mean_by_attempt(runs, watch, attempts), "runs": runs}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "trajectory.json", json.dumps(result, indent=1))
        plot_trajectory(result, out / TRAJECTORY_FIGURE)
    return result
