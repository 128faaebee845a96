"""Scenarios (prompt families with a grader) and steering conditions, as files describe them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from emovec.errors import EmovecError
from emovec.models import LanguageModel
from emovec.studies.graders import GRADERS


class StudyError(EmovecError, ValueError):
    """A scenario, condition or study folder that cannot be used as given."""


@dataclass(frozen=True)
class Condition:
    """One steering setting: ``emotion`` at signed ``strength`` (``None`` = unsteered)."""

    emotion: str | None = None
    strength: float = 0.0
    layers: tuple[int, ...] | None = None
    positions: str = "all"

    @property
    def steered(self) -> bool:
        return self.emotion is not None and self.strength != 0.0

    @property
    def name(self) -> str:
        if not self.steered:
            return "unsteered"
        where = "" if self.positions == "all" else f" @{self.positions}"
        layers = "" if self.layers is None else " L" + ",".join(map(str, self.layers))
        return f"{self.emotion} {self.strength:+g}{layers}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "emotion": self.emotion,
            "strength": self.strength,
            "layers": list(self.layers) if self.layers is not None else None,
            "positions": self.positions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        """The inverse of :meth:`to_dict` (layers come back as a tuple)."""
        layers = data.get("layers")
        return cls(**{**data, "layers": tuple(layers) if layers else None})

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> Condition:
        """``"none"``, or ``"desperate:+0.05"`` / ``"calm=-0.1"``."""
        text = text.strip()
        if text.lower() in ("none", "unsteered", "0"):
            return cls(**kwargs)
        match = re.fullmatch(r"([A-Za-z][A-Za-z \-]*?)\s*[:=]\s*([+-]?\d*\.?\d+(?:e-?\d+)?)", text)
        if not match:
            raise StudyError(
                f"condition {text!r} should look like desperate:+0.05 or calm:-0.1 (or none)"
            )
        return cls(emotion=match.group(1).strip(), strength=float(match.group(2)), **kwargs)


@dataclass
class Scenario:
    """A family of prompts and the grader that judges the replies.

    ``system`` and ``user`` are templates filled from each item's fields; an item may instead
    give its own ``turns`` (a list of ``{"role", "content"}``; roles system, user, assistant
    or tool) for multi-turn and tool-style conversations.
    """

    name: str
    grader: str
    items: list[dict[str, Any]]
    description: str = ""
    family: str = ""
    system: str | None = None
    user: str = "{prompt}"
    feedback: str | None = None
    max_new_tokens: int = 80
    watch: list[str] = field(default_factory=list)
    default_conditions: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    judge_prompt: str | None = None
    #: The rule grader measured against hand-labelled replies (:mod:`.grader_check`).
    rule_accuracy: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grader not in GRADERS:
            raise StudyError(
                f"scenario {self.name!r}: unknown grader {self.grader!r}; "
                f"choose from {', '.join(GRADERS)}"
            )
        if not self.items:
            raise StudyError(f"scenario {self.name!r} has no items")
        for i, item in enumerate(self.items):
            item.setdefault("id", str(i))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        if not isinstance(data, dict):
            raise StudyError(f"a scenario is a JSON object, not {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise StudyError(f"unknown scenario fields: {', '.join(sorted(unknown))}")
        if "name" not in data or "grader" not in data or "items" not in data:
            raise StudyError("a scenario needs at least name, grader and items")
        _check_scenario_fields(data)
        scenario = cls(**data)
        for item in scenario.items:  # every template fills from every item, here not mid-study
            try:
                scenario.turns(item)
            except StudyError:
                raise
            except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
                raise StudyError(
                    f"scenario {scenario.name!r}: item {item.get('id')!r} does not fill its "
                    f"templates ({type(exc).__name__}: {exc})"
                ) from None
        return scenario

    def turns(self, item: dict[str, Any]) -> list[dict[str, str]]:
        """The chat turns of one item, templates filled."""
        if "turns" in item:
            return [
                {"role": t["role"], "content": fill_template(t["content"], item)}
                for t in item["turns"]
            ]
        turns = []
        if self.system:
            turns.append({"role": "system", "content": fill_template(self.system, item)})
        turns.append({"role": "user", "content": fill_template(self.user, item)})
        return turns

    def conditions(self) -> list[Condition]:
        return [Condition(**c) for c in self.default_conditions] or [Condition()]


def study_conditions(
    scenario: Scenario,
    specs: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: str = "all",
) -> list[Condition]:
    """The conditions a study runs: each ``"EMOTION:STRENGTH"`` / ``"none"`` spec, or else the
    scenario's default conditions, all at ``layers`` and ``positions``.

    The given layers and positions replace those of the default conditions. An unsteered
    condition becomes a plain ``Condition()``, so that every spelling of "no steering" (none,
    a zero strength, unsteered at some layers) is one condition with one name and one seed.
    """
    extra = {"layers": tuple(layers) if layers else None, "positions": positions}
    if specs:
        conditions = [Condition.parse(spec, **extra) for spec in specs]
    else:
        conditions = [Condition(**{**c.to_dict(), **extra}) for c in scenario.conditions()]
    return [c if c.steered else Condition() for c in conditions]


_TEXT_FIELDS = {
    "name": False,
    "grader": False,
    "description": False,
    "family": False,
    "user": False,
    "system": True,
    "feedback": True,
    "judge_prompt": True,
}
_CONDITION_TYPES = {
    "emotion": (str, type(None)),
    "strength": (int, float),
    "layers": (list, type(None)),
    "positions": (str,),
}


def _check_scenario_fields(data: dict[str, Any]) -> None:
    """Refuse scenario fields of the wrong type (StudyError naming the field)."""
    name = data["name"]

    def bad(what: str) -> StudyError:
        shown = repr(name) if isinstance(name, str) else "(unnamed)"
        return StudyError(f"scenario {shown}: {what}")

    for key, optional in _TEXT_FIELDS.items():
        if key in data and not (isinstance(data[key], str) or (optional and data[key] is None)):
            raise bad(f"{key!r} must be a string{' or null' if optional else ''}")
    items = data["items"]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad("'items' must be a list of objects")
    for i, item in enumerate(items):
        turns = item.get("turns", [])
        if not isinstance(turns, list) or not all(
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
            for t in turns
        ):
            raise bad(f"item {i}: 'turns' must be a list of {{role, content}} strings")
    tokens = data.get("max_new_tokens", 80)
    if not (isinstance(tokens, int) and not isinstance(tokens, bool) and 0 < tokens <= 1_000_000):
        raise bad("'max_new_tokens' must be a positive integer")
    watch = data.get("watch", [])
    if not isinstance(watch, list) or not all(isinstance(e, str) for e in watch):
        raise bad("'watch' must be a list of emotion names")
    for key in ("reference", "rule_accuracy"):
        if not isinstance(data.get(key, {}), dict):
            raise bad(f"{key!r} must be an object")
    conditions = data.get("default_conditions", [])
    if not isinstance(conditions, list):
        raise bad("'default_conditions' must be a list")
    for c in conditions:
        if not (
            isinstance(c, dict)
            and set(c) <= set(_CONDITION_TYPES)
            and all(isinstance(v, _CONDITION_TYPES[k]) for k, v in c.items())
            and not isinstance(c.get("strength"), bool)
            and abs(c.get("strength", 0.0)) <= 1e6  # False for NaN, no overflow for big ints
            and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0
                for x in c.get("layers") or []
            )
        ):
            raise bad(f"bad default condition {c!r:.80}")


def fill_template(template: str, item: dict[str, Any]) -> str:
    """A scenario template (``str.format`` syntax) filled from an item's fields.

    List-of-string fields are joined by newlines; a coding item's ``visible`` tests are also
    offered as ``{tests}``, one ``assert`` a line. A field the item lacks is a StudyError.
    """
    values = {
        k: "\n".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
        for k, v in item.items()
    }
    if "visible" in item:  # coding tasks show their tests as asserts
        values.setdefault("tests", "\n".join(f"assert {t}" for t in item["visible"]))
    try:
        return template.format(**values)
    except KeyError as exc:
        raise StudyError(f"template needs field {exc} that item {item.get('id')!r} lacks") from exc


def _bundled_folder() -> Any:
    return resources.files("emovec") / "data" / "studies"


def bundled_scenarios() -> list[str]:
    """Names of the scenarios that ship with emovec."""
    files = _bundled_folder().iterdir()
    return sorted(p.name.removesuffix(".json") for p in files if p.name.endswith(".json"))


def load_scenario(spec: str | Path) -> Scenario:
    """A bundled scenario by name, or a scenario .json file."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StudyError(f"cannot read scenario {spec}: {exc}") from None
    elif str(spec) in bundled_scenarios():
        text = (_bundled_folder() / f"{spec}.json").read_text("utf-8")
    else:
        raise StudyError(
            f"no scenario {str(spec)!r}: give a .json file or one of "
            f"{', '.join(bundled_scenarios())}"
        )
    try:
        return Scenario.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise StudyError(f"scenario {spec} is not valid JSON: {exc}") from exc
    except (RecursionError, ValueError) as exc:  # nested too deeply; an integer of 5000 digits
        if isinstance(exc, StudyError):
            raise
        raise StudyError(f"scenario {spec} cannot be read: {type(exc).__name__}") from None


def render_chat(lm: LanguageModel, turns: Sequence[dict[str, str]]) -> str:
    """Chat turns in the model's format; tool turns become user turns marked as tool output.

    Many chat templates reject a ``tool`` role or need tool-call metadata; a marked user turn
    works with every template and keeps the content the model sees the same across models.
    """
    messages = []
    for turn in turns:
        role = turn["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise StudyError(f"unknown chat role {role!r}: use system, user, assistant or tool")
        if role == "tool":
            messages.append({"role": "user", "content": "[tool output]\n" + turn["content"]})
        else:
            messages.append({"role": role, "content": turn["content"]})
    return lm.format_chat(messages)
