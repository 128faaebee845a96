"""Running a study: seeded rollouts generated with steering and monitor hooks, graded, and
appended to ``rollouts.jsonl`` one record at a time, so that a stopped study resumes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec.files import AppendLog, read_log, write_atomic
from emovec.generation import decode_reply, generate_ids
from emovec.models import LanguageModel
from emovec.monitor import ScoreRecorder
from emovec.progress import count_progress
from emovec.steering import steer
from emovec.studies.graders import GRADERS
from emovec.studies.judge import Judge
from emovec.studies.page import write_outputs
from emovec.studies.scenario import Condition, Scenario, StudyError, render_chat
from emovec.studies.summary import summarise
from emovec.vectors import EmotionVectors


def sample_monitored(
    lm: LanguageModel,
    vectors: EmotionVectors,
    text: str,
    condition: Condition,
    watch: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    layer: int | None = None,
) -> tuple[str, list[int], np.ndarray]:
    """Sample one reply to a formatted prompt under ``condition`` while monitoring ``watch``.

    Returns (reply text, generated ids, scores). ``scores`` [1 + fed-back tokens, emotions]:
    row 0 is the last prompt token (where the reply starts; the study's reading spot), row
    i >= 1 the i-th generated token.
    """
    ids = lm.encode(text)
    monitor = ScoreRecorder(lm, vectors, emotions=list(watch), layer=layer)
    steering = (
        steer(
            lm,
            vectors,
            {condition.emotion: condition.strength},
            layers=condition.layers,
            positions=condition.positions,
            prompt_length=len(ids),
        )
        if condition.steered
        else nullcontext()
    )
    with steering, monitor.watching():
        out = generate_ids(
            lm,
            torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
    new = out[0, len(ids) :].tolist()
    scores = monitor.scores()[0][len(ids) - 1 :]
    return decode_reply(lm, new), new, scores


def rollout_seed(study_seed: int, condition: Condition, index: int) -> int:
    """A per-rollout seed that depends on nothing else (order, batch, earlier runs)."""
    key = f"{study_seed}|{json.dumps(condition.to_dict(), sort_keys=True)}|{index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Study:
    """A scenario under several conditions, ``rollouts`` sampled replies each.

    Rollout ``i`` of a condition uses item ``i % len(items)`` (all items get equal weight)
    and its own seed.
    """

    scenario: Scenario
    conditions: list[Condition]
    rollouts: int = 10
    max_new_tokens: int | None = None
    temperature: float = 0.8
    seed: int = 0
    watch: list[str] | None = None
    items: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rollouts < 1:
            raise StudyError("rollouts must be at least 1")
        if not self.conditions:
            raise StudyError("give at least one condition")
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            raise StudyError(f"duplicate conditions: {', '.join(names)}")
        if self.items is not None:
            known = {i["id"] for i in self.scenario.items}
            missing = [i for i in self.items if i not in known]
            if missing:
                raise StudyError(
                    f"scenario {self.scenario.name!r} has no items {', '.join(missing)}; "
                    f"it has {', '.join(sorted(known))}"
                )

    @property
    def chosen_items(self) -> list[dict[str, Any]]:
        if self.items is None:
            return self.scenario.items
        return [i for i in self.scenario.items if i["id"] in self.items]

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or self.scenario.max_new_tokens

    def settings(self, vectors: EmotionVectors) -> dict[str, Any]:
        """Everything that fixes the rollouts: a folder holding other settings is refused."""
        return {
            "scenario": asdict(self.scenario),
            "conditions": [c.to_dict() for c in self.conditions],
            "max_new_tokens": self.new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "watch": self.watched(vectors),
            "items": [i["id"] for i in self.chosen_items],
            "model": vectors.model.get("fingerprint"),
        }

    def watched(self, vectors: EmotionVectors) -> list[str]:
        wanted = self.watch if self.watch is not None else self.scenario.watch
        present = [e for e in wanted if e in vectors.emotions]
        if self.watch is not None and len(present) < len(wanted):
            return [vectors.resolve(e) for e in wanted]  # raises naming the unknown one
        return present or list(vectors.emotions[:8])


# --------------------------------------------------------------------------- the rollout log

#: Keys every rollout record has (a line without them is damaged, not a record).
ROLLOUT_KEYS = ("condition", "index")


def _record_line(record: dict[str, Any]) -> str:
    # plain json.dumps, not the log's sorted default: a record's keys keep the order
    # ``rollout`` gives them (condition and index first), as earlier study folders have them
    return json.dumps(record)


def open_rollouts(path: str | Path) -> AppendLog:
    """The rollout log of a study folder, opened to append (see :class:`AppendLog`): a torn
    last line is cut, a damaged line elsewhere is skipped with a warning, and every record
    after it is kept."""
    return AppendLog(path, required=ROLLOUT_KEYS, dumps=_record_line)


def load_rollouts(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a rollouts file (see :class:`emovec.files.AppendLog`): a torn last line (a
    run killed mid-write) is dropped, and with ``repair`` cut from the file so that appending
    continues cleanly; a damaged line elsewhere is skipped with a warning, and every record
    after it is kept. Without ``repair`` the file is not changed."""
    if repair:
        return open_rollouts(path).records
    return read_log(path, required=ROLLOUT_KEYS)


# --------------------------------------------------------------------------- settings

#: Stands for a setting one of two study.json files lacks.
_MISSING = object()


def _shown(key: str, value: Any, width: int = 60) -> str:
    """A setting's value, short: conditions by name, anything else as compact JSON."""
    if value is _MISSING:
        return "(none)"
    if key == "conditions" and isinstance(value, list):
        with suppress(TypeError, AttributeError):  # a hand-edited file: shown as it is
            value = [Condition.from_dict(c).name for c in value]
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def setting_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for each setting that differs (nested ones as ``a.b``), so that a
    refused study folder says what to change back."""
    changes = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += setting_changes(a, b, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key}: {_shown(key, a)} -> {_shown(key, b)}")
    return changes


def _claim_folder(out: Path, study: Study, settings: dict[str, Any]) -> None:
    """Write study.json, refusing a folder that holds a study with other settings."""
    path = out / "study.json"
    if path.exists():
        previous = json.loads(path.read_text("utf-8"))
        previous = {k: v for k, v in previous.items() if k != "rollouts"}
        if previous != settings:
            changed = "; ".join(setting_changes(previous, settings))
            raise StudyError(
                f"{out} holds a study with other settings ({changed}); use a new --out folder "
                "(or delete that one) to start afresh"
            )
    write_atomic(path, json.dumps({**settings, "rollouts": study.rollouts}, indent=1))


# --------------------------------------------------------------------------- running


def _pending(study: Study, done: set[tuple[str, int]]) -> Iterator[tuple[Condition, int]]:
    # Round-robin over conditions, so a study stopped early has every condition sampled.
    for index in range(study.rollouts):
        for condition in study.conditions:
            if (condition.name, index) not in done:
                yield condition, index


def run_study(
    lm: LanguageModel,
    vectors: EmotionVectors,
    study: Study,
    out_dir: str | Path,
    judge: Judge | None = None,
    progress: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study in ``out_dir``; returns the summary also saved as result.json."""
    vectors.check_model(lm)
    for condition in study.conditions:
        if condition.emotion is not None:
            vectors.resolve(condition.emotion)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = study.settings(vectors)
    _claim_folder(out, study, settings)
    log = open_rollouts(out / "rollouts.jsonl")
    records = list(log.records)
    done = {(r["condition"], r["index"]) for r in records}
    todo = list(_pending(study, done))
    watch = settings["watch"]
    items = study.chosen_items
    with count_progress(len(todo), study.scenario.name, "rollouts", progress) as tick:
        for condition, index in todo:
            item = items[index % len(items)]
            record = rollout(lm, vectors, study, condition, index, item, watch, judge)
            log.append(record)
            records.append(record)
            tick(1)
            if on_record is not None:
                on_record(record)
    summary = summarise(study, records, vectors)
    write_outputs(out, summary, records)
    return summary


def rollout(
    lm: LanguageModel,
    vectors: EmotionVectors,
    study: Study,
    condition: Condition,
    index: int,
    item: dict[str, Any],
    watch: Sequence[str],
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Generate, monitor and grade one rollout; the JSON record appended to rollouts.jsonl."""
    seed = rollout_seed(study.seed, condition, index)
    text = render_chat(lm, study.scenario.turns(item))
    start = time.perf_counter()
    reply, new_ids, scores = sample_monitored(
        lm, vectors, text, condition, watch, study.new_tokens, study.temperature, seed
    )
    seconds = time.perf_counter() - start
    verdict = GRADERS[study.scenario.grader](study.scenario, item, reply)
    record = {
        "condition": condition.name,
        **condition.to_dict(),
        "index": index,
        "item": item["id"],
        "seed": seed,
        "reply": reply,
        "flag": bool(verdict["flag"]),
        "label": verdict["label"],
        "verdict": verdict,
        "trace": {
            "emotions": list(watch),
            "layer": vectors.default_layer,
            "tokens": [lm.tokenizer.decode([i]) for i in [lm.encode(text)[-1], *new_ids[:-1]]],
            "scores": np.round(scores, 5).tolist(),
        },
        "generate_seconds": round(seconds, 3),
    }
    if judge is not None:
        record["judge"] = judge(study.scenario, item, reply)
    return record


# --------------------------------------------------------------------------- reading back


def load_study(out_dir: str | Path) -> tuple[Study, list[dict[str, Any]]]:
    """The study saved in a folder and its rollouts so far (for pages of unfinished studies)."""
    out = Path(out_dir)
    if not (out / "study.json").is_file():
        raise StudyError(f"{out} holds no study (no study.json); run `emovec study run` first")
    settings = json.loads((out / "study.json").read_text("utf-8"))
    study = Study(
        scenario=Scenario.from_dict(settings["scenario"]),
        conditions=[Condition.from_dict(c) for c in settings["conditions"]],
        rollouts=settings["rollouts"],
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        seed=settings["seed"],
        watch=settings["watch"],
        items=settings["items"],
    )
    return study, load_rollouts(out / "rollouts.jsonl")


def rebuild_outputs(out_dir: str | Path, vectors: EmotionVectors | None = None) -> dict[str, Any]:
    """Rewrite result.json, the figure and index.html from the rollouts recorded so far."""
    study, records = load_study(out_dir)
    summary = summarise(study, records, vectors)
    previous = Path(out_dir) / "result.json"
    if vectors is None and previous.is_file():  # keep the model and layer recorded earlier
        earlier = json.loads(previous.read_text("utf-8"))
        summary["model"], summary["steer_layer"] = earlier["model"], earlier["steer_layer"]
    write_outputs(Path(out_dir), summary, records)
    return summary
