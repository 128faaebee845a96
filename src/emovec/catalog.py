"""The 171 emotion concepts of the reference study, their 10 families, and the 100 story topics.

Every other module names emotions through :func:`resolve`, so a typo fails in one place with
one kind of message (the closest valid names), whatever entry point the user came through.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from emovec.errors import EmovecError


class UnknownEmotionError(EmovecError, ValueError):
    """An emotion name that is not in the catalog (or not in a vector file)."""


@cache
def _load(name: str) -> Any:
    return json.loads(resources.files("emovec.data").joinpath(name).read_text("utf-8"))


def emotions() -> list[str]:
    """The 171 emotion words, in the study's (alphabetical) order."""
    return list(_load("emotions.json"))


def families() -> dict[str, list[str]]:
    """The study's k-means (k=10) families: {family name: [emotions]}."""
    return {k: list(v) for k, v in _load("families.json").items()}


def family_of(emotion: str) -> str:
    """Name of the family an emotion belongs to."""
    emotion = resolve(emotion)
    for family, members in _load("families.json").items():
        if emotion in members:
            return family
    raise AssertionError(f"catalog inconsistency: {emotion!r} has no family")


def topics() -> list[str]:
    """The 100 emotionally neutral story topics of the study."""
    return list(_load("topics.json"))


def suggest(name: str, valid: list[str], n: int = 3) -> list[str]:
    """Closest valid names to a misspelt one."""
    return difflib.get_close_matches(name.lower().strip(), valid, n=n, cutoff=0.5)


def resolve(name: str, valid: list[str] | None = None) -> str:
    """Return the canonical emotion name, or raise with the closest valid names.

    Accepts any case and underscores for spaces/hyphens ("worn_out", "Self_Confident").
    ``valid`` restricts the choice (for example to the emotions of a vector file).
    """
    pool = valid if valid is not None else emotions()
    key = name.strip().lower()
    if key in pool:
        return key
    loose = {v.replace("-", "_").replace(" ", "_"): v for v in pool}
    norm = key.replace("-", "_").replace(" ", "_")
    if norm in loose:
        return loose[norm]
    close = suggest(key, pool)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    where = "the catalog" if valid is None else "this vector file"
    raise UnknownEmotionError(
        f"unknown emotion {name!r}: not in {where}.{hint} (`emovec emotions` lists them)"
    )
