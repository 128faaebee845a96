"""Behavioural case studies: how often a model does something under each steering condition.

A :class:`Scenario` is a family of chat prompts (system, user, assistant and tool turns) plus
a grader; a :class:`Study` runs a scenario under several steering :class:`Condition`\\ s, with
a number of sampled rollouts per condition. Every rollout is generated with the steering and
monitor hooks on, graded, and appended to ``rollouts.jsonl`` as one record that holds the
reply, the verdict and the per-token emotion trace. Each rollout has its own seed, derived
from the study seed, the condition and the rollout index, so a study that is stopped and
started again picks up where it stopped and produces exactly what an uninterrupted run would.

Outputs of :func:`run_study` in its folder: ``study.json`` (the settings), ``rollouts.jsonl``,
``result.json`` (rates with 95% Wilson intervals beside the reference study's numbers),
``rate_vs_strength.png`` and ``index.html`` (one self-contained page).

Three scenario families ship with emovec (``emovec study list``): ``blackmail``,
``reward_hacking`` and ``sycophancy``. :func:`run_trajectory` follows one model through
several attempts at an impossible coding task, reading its emotions at each attempt.

Where each part lives:

- :mod:`~emovec.studies.scenario`: scenarios, conditions (:func:`study_conditions` turns
  command-line specs into them), loading, chat rendering;
- :mod:`~emovec.studies.graders`: the rule graders (``GRADERS``);
- :mod:`~emovec.studies.judge`: the optional LLM judge and its health;
- :mod:`~emovec.studies.run`: :class:`Study`, seeded rollouts, the rollout log, resuming;
- :mod:`~emovec.studies.summary`: rates, intervals, readings per condition;
- :mod:`~emovec.studies.page`: the figures, result.json and index.html;
- :mod:`~emovec.studies.trajectory`: emotions across repeated attempts;
- :mod:`~emovec.studies.sandbox`: the box that runs model-written code (also importable as
  ``emovec.sandbox``).
"""

from emovec.stats import Z95, wilson_interval
from emovec.studies.graders import (
    GRADERS,
    Verdict,
    extract_code,
    grade_agreement,
    grade_hidden_checks,
    grade_leverage,
    run_checks,
)
from emovec.studies.judge import Judge, chat_completion, judge_failed, judge_health
from emovec.studies.page import (
    TRAJECTORY_CAPTION,
    plot_rates,
    plot_trajectory,
    render_page,
    write_outputs,
)
from emovec.studies.run import (
    ROLLOUT_KEYS,
    Study,
    load_rollouts,
    load_study,
    open_rollouts,
    rebuild_outputs,
    rollout,
    rollout_seed,
    run_study,
    sample_monitored,
    setting_changes,
)
from emovec.studies.scenario import (
    Condition,
    Scenario,
    StudyError,
    bundled_scenarios,
    fill_template,
    load_scenario,
    render_chat,
    study_conditions,
)
from emovec.studies.summary import report_section, summarise
from emovec.studies.trajectory import run_trajectory

__all__ = [
    "GRADERS",
    "ROLLOUT_KEYS",
    "TRAJECTORY_CAPTION",
    "Z95",
    "Condition",
    "Judge",
    "Scenario",
    "Study",
    "StudyError",
    "Verdict",
    "bundled_scenarios",
    "chat_completion",
    "extract_code",
    "fill_template",
    "grade_agreement",
    "grade_hidden_checks",
    "grade_leverage",
    "judge_failed",
    "judge_health",
    "load_rollouts",
    "load_scenario",
    "load_study",
    "open_rollouts",
    "plot_rates",
    "plot_trajectory",
    "rebuild_outputs",
    "render_chat",
    "render_page",
    "report_section",
    "rollout",
    "rollout_seed",
    "run_checks",
    "run_study",
    "run_trajectory",
    "sample_monitored",
    "setting_changes",
    "study_conditions",
    "summarise",
    "wilson_interval",
    "write_outputs",
]
