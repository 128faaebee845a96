"""Quality gates for a crossed-design corpus (the bundled corpus v2 and any corpus built like it).

A crossed design puts every emotion on the same topics, so that topic and emotion are not
confounded in the class means. The gates are the rules a program can check: the design's
cells are all filled once, narration follows the design's balance rule, lengths are in range,
no story names its emotion or a listed synonym, neutral texts contain no emotion word at all,
and no two texts are near-duplicates. Each gate returns a list of problems (empty = pass), so
tests and the writers' checker report every offender at once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from emovec import catalog
from emovec.authoring import (
    Filters,
    NearDuplicates,
    any_emotion_word,
    check_dialogue,
    check_story,
    emotion_word_pattern,
)

#: Word 3-gram Jaccard similarity at or above which two texts count as near-duplicates.
NEAR_DUPLICATE = 0.35


@cache
def design_v2() -> dict[str, Any]:
    """The crossed design of the bundled corpus v2: topics, lengths, narration rule."""
    text = (
        resources.files("emovec.data")
        .joinpath("corpus_v2")
        .joinpath("design.json")
        .read_text("utf-8")
    )
    return json.loads(text)


def expected_narration(emotion: str, topic: str, topics: Sequence[str]) -> str:
    """First person when (catalog index + topic index) is even: balanced per topic and emotion."""
    index = catalog.emotions().index(emotion) + list(topics).index(topic)
    return "first" if index % 2 == 0 else "third"


_QUOTED = re.compile(r'"[^"]*"|\u201c[^\u201d]*\u201d')
_FIRST_PERSON = re.compile(r"\b(?:I|me|my|mine|myself|we|us|our|ourselves)\b", re.IGNORECASE)
_THIRD_PERSON = re.compile(r"\b(?:he|she|him|her|his|hers|himself|herself)\b", re.IGNORECASE)


def narration_of(text: str) -> str:
    """The voice a story is told in: "first" when the narration outside quoted speech uses
    I/me/my at least twice, unless it is a third-person story quoting a short note without
    quotation marks (fewer than four I/me/my, outnumbered by he/she/his/her)."""
    plain = _QUOTED.sub(" ", text)
    first, third = len(_FIRST_PERSON.findall(plain)), len(_THIRD_PERSON.findall(plain))
    if first < 2 or (first < 4 and third > first):
        return "third"
    return "first"


def story_problems(records: Sequence[dict[str, Any]], design: dict[str, Any]) -> list[str]:
    """Every rule a story record breaks: keys, topic, narration, length, paragraph, own word."""
    topics = design["topics"]
    filters = Filters(min_words=design["min_words"], max_words=design["max_words"])
    emotions = set(catalog.emotions())
    problems = []
    for i, r in enumerate(records):
        where = f"story {i} ({r.get('emotion')!r}, {str(r.get('topic'))[:40]!r})"
        if r.get("emotion") not in emotions:
            problems.append(f"{where}: emotion is not a catalog name")
            continue
        if r.get("topic") not in topics:
            problems.append(f"{where}: topic is not one of the design's topics")
            continue
        want = expected_narration(r["emotion"], r["topic"], topics)
        if r.get("narration") != want:
            problems.append(f"{where}: narration should be {want!r}")
        text = r.get("text")
        if not isinstance(text, str):
            problems.append(f"{where}: no text")
            continue
        if "\n" in text.strip():
            problems.append(f"{where}: more than one paragraph")
        if r.get("narration") == want and narration_of(text) != want:
            problems.append(f"{where}: the text reads as {narration_of(text)} person")
        if reason := check_story(text, r["emotion"], filters):
            detail = ""
            if reason == "names_emotion":
                match = emotion_word_pattern(r["emotion"]).search(text)
                detail = f" ({match.group(0)!r})" if match else ""
            words = len(text.split())
            problems.append(f"{where}: {reason}{detail} [{words} words]")
    return problems


def missing_cells(
    records: Iterable[dict[str, Any]], emotions: Sequence[str], topics: Sequence[str]
) -> list[str]:
    """(emotion, topic) cells without exactly one story."""
    counts = Counter((r.get("emotion"), r.get("topic")) for r in records)
    return [
        f"{e!r} x {t[:40]!r}: {counts[(e, t)]} stories"
        for e in emotions
        for t in topics
        if counts[(e, t)] != 1
    ]


def near_duplicate_pairs(texts: Sequence[str], threshold: float = NEAR_DUPLICATE) -> list[int]:
    """Indices of texts that nearly duplicate an earlier one (word 3-gram Jaccard)."""
    seen = NearDuplicates(threshold)
    return [i for i, text in enumerate(texts) if seen.seen("all", text)]


def neutral_story_problems(records: Sequence[dict[str, Any]], design: dict[str, Any]) -> list[str]:
    """Neutral stories: on a design topic, in length, one paragraph, no emotion word at all."""
    problems = []
    for i, r in enumerate(records):
        text = r.get("text")
        where = f"neutral story {i} ({str(r.get('topic'))[:40]!r})"
        if r.get("topic") not in design["topics"]:
            problems.append(f"{where}: topic is not one of the design's topics")
        if not isinstance(text, str):
            problems.append(f"{where}: no text")
            continue
        words = len(text.split())
        if not design["min_words"] <= words <= design["max_words"]:
            problems.append(f"{where}: {words} words")
        if "\n" in text.strip():
            problems.append(f"{where}: more than one paragraph")
        if match := any_emotion_word(text):
            problems.append(f"{where}: emotion word {match!r}")
    return problems


def dialogue_problems(records: Sequence[dict[str, Any]]) -> list[str]:
    """Neutral dialogues: on a catalog topic, user first, 60-260 words, no emotion word."""
    filters = Filters(min_words=60, max_words=260)
    topics = set(catalog.topics())
    problems = []
    for i, r in enumerate(records):
        where = f"dialogue {i} ({str(r.get('topic'))[:40]!r})"
        turns = r.get("turns")
        if r.get("topic") not in topics:
            problems.append(f"{where}: topic is not one of the 100 catalog topics")
        ok = isinstance(turns, list) and all(
            isinstance(t, dict)
            and t.get("role") in ("user", "assistant")
            and isinstance(t.get("content"), str)
            for t in turns
        )
        if not ok or not turns or turns[0]["role"] != "user":
            problems.append(f"{where}: turns must be user/assistant messages, user first")
            continue
        if reason := check_dialogue(turns, filters):
            text = " ".join(t["content"] for t in turns)
            problems.append(f"{where}: {reason} ({any_emotion_word(text) or len(text.split())})")
    return problems


def message_problems(records: Sequence[dict[str, Any]], min_per_emotion: int = 3) -> list[str]:
    """Other-style held-out texts: short, known emotion, never naming it, enough per emotion."""
    problems = []
    emotions = catalog.emotions()
    for i, r in enumerate(records):
        text = r.get("text")
        where = f"message {i} ({r.get('emotion')!r})"
        if r.get("emotion") not in emotions:
            problems.append(f"{where}: emotion is not a catalog name")
            continue
        if r.get("style") not in {"message", "chat"}:
            problems.append(f"{where}: style should be 'message' or 'chat'")
        if not isinstance(text, str) or not 5 <= len(text.split()) <= 80:
            problems.append(f"{where}: text of 5-80 words needed")
            continue
        if match := emotion_word_pattern(r["emotion"]).search(text):
            problems.append(f"{where}: names its emotion ({match.group(0)!r})")
    counts = Counter(r.get("emotion") for r in records)
    problems += [
        f"{e!r}: {counts[e]} messages (need {min_per_emotion})"
        for e in emotions
        if counts[e] < min_per_emotion
    ]
    return problems
