"""What a corpus run asks for: topics, the story and neutral designs, their ordered requests.

A design expands into a fixed, ordered list of :class:`Request` (one prompt each). The order
and each request's key never depend on how far a run got, so a resumed run asks the same
questions and seeds them the same way (:func:`derive_seed`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from emovec import catalog
from emovec.errors import EmovecError

PROMPTS_VERSION = "v1"
STORIES, NEUTRAL = "stories", "neutral"
KINDS = (STORIES, NEUTRAL)
#: Prompt templates of each kind start with this name (``story_one``, ``neutral``...).
TEMPLATE_PREFIX = {STORIES: "story_", NEUTRAL: "neutral"}


class AuthoringError(EmovecError, RuntimeError):
    """A corpus run that cannot go on: unreachable or broken author, full disk, wrong folder."""


@cache
def prompts(version: str = PROMPTS_VERSION) -> dict[str, str]:
    """The prompt templates of a version (package data ``emovec/data/prompts/<version>.json``)."""
    try:
        folder = resources.files("emovec.data").joinpath("prompts")
        text = folder.joinpath(f"{version}.json").read_text()
    except FileNotFoundError as exc:
        raise AuthoringError(
            f"unknown prompts version {version!r} (have: {PROMPTS_VERSION})"
        ) from exc
    return json.loads(text)


def templates_of(kind: str, version: str = PROMPTS_VERSION) -> dict[str, str]:
    """The templates one kind of run uses (recorded in its manifest section)."""
    return {k: v for k, v in prompts(version).items() if k.startswith(TEMPLATE_PREFIX[kind])}


def load_topics(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """The study's 100 topics, or one topic per line of a UTF-8 text file (``#`` comments)."""
    if path is None:
        topics = catalog.topics()
    else:
        try:
            lines = Path(path).expanduser().read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise AuthoringError(
                f"cannot read topic file {path}: {reason} "
                "(give a UTF-8 text file, one topic a line)"
            ) from exc
        topics = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
        if not topics:
            raise AuthoringError(f"topic file {path} has no topics (one topic a line)")
        if len(set(topics)) != len(topics):
            raise AuthoringError(f"topic file {path} lists a topic twice")
    if limit is not None:
        if limit < 1:
            raise AuthoringError(f"the number of topics must be at least 1, got {limit}")
        topics = topics[:limit]
    return topics


@dataclass
class Request:
    """One prompt to the author, asking for ``n`` items; ``index`` fixes its place in the run."""

    index: int
    key: str
    prompt: str
    n: int
    meta: dict[str, Any]


@dataclass
class StoryDesign:
    """Emotions x topics x stories per topic, asked ``per_request`` stories at a time."""

    emotions: list[str]
    topics: list[str]
    per_topic: int = 12
    per_request: int = 1
    min_words: int = 60
    max_words: int = 180

    def __post_init__(self) -> None:
        self.emotions = [catalog.resolve(e) for e in self.emotions]
        if len(set(self.emotions)) != len(self.emotions):
            raise AuthoringError("an emotion is listed twice")
        _check_counts(self.per_topic, self.per_request, self.min_words, self.max_words)

    def requests(self, version: str = PROMPTS_VERSION) -> list[Request]:
        """Requests ordered round by round, then topic, then emotion, so that a partial run
        already covers every emotion."""
        text = prompts(version)
        out: list[Request] = []
        rounds = -(-self.per_topic // self.per_request)
        for r in range(rounds):
            n = min(self.per_request, self.per_topic - r * self.per_request)
            for t, topic in enumerate(self.topics):
                for e, emotion in enumerate(self.emotions):
                    narration = "first" if (r + t + e) % 2 == 0 else "third"
                    fields = dict(topic=topic, emotion=emotion, n=n, narration=narration)
                    fields |= dict(min_words=self.min_words, max_words=self.max_words)
                    template = text["story_one"] if n == 1 else text["story_many"]
                    meta = {"emotion": emotion, "topic": topic}
                    if n == 1:
                        meta["narration"] = narration
                    key = f"{emotion}|{topic}|{r}"
                    out.append(Request(len(out), key, template.format(**fields), n, meta))
        return out


@dataclass
class NeutralDesign:
    """Neutral Human/Assistant dialogues: topics x dialogues per topic, one per request."""

    topics: list[str]
    per_topic: int = 2
    min_words: int = 30
    max_words: int = 300

    def __post_init__(self) -> None:
        _check_counts(self.per_topic, 1, self.min_words, self.max_words)

    def requests(self, version: str = PROMPTS_VERSION) -> list[Request]:
        """Requests ordered round by round, then topic."""
        template = prompts(version)["neutral"]
        out: list[Request] = []
        for r in range(self.per_topic):
            for topic in self.topics:
                key = f"{topic}|{r}"
                out.append(
                    Request(len(out), key, template.format(topic=topic), 1, {"topic": topic})
                )
        return out


def _check_counts(per_topic: int, per_request: int, min_words: int, max_words: int) -> None:
    if per_topic < 1 or per_request < 1:
        raise AuthoringError("items per topic and per request must be at least 1")
    if not 0 < min_words < max_words:
        raise AuthoringError(f"need 0 < min words < max words, got {min_words}, {max_words}")


def derive_seed(seed: int, key: str) -> int:
    """A 31-bit seed from the run seed and a request key (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
