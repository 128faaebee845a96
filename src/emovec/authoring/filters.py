"""From raw replies to accepted items: splitting, cleaning, quality filters, near-duplicates.

Every rejection has a named reason (``refusal``, ``junk``, ``too_short``, ``names_emotion``,
``near_duplicate``...), counted in the manifest and written beside the item in the rejects
file, so a corpus's losses can be read rather than guessed. :func:`select` is deterministic
in the replies: items are taken in request order, whatever order the requests finished in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from emovec import catalog
from emovec.authoring.design import NEUTRAL

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i (?:cannot|can't|can not|won't|am unable to)|as an ai\b|"
    r"i'?m not able to|i apologi[sz]e)",
    re.IGNORECASE,
)
_MARKER = re.compile(
    r"^\s*(?:#{1,6}\s*)?\**\s*(?:story|tale)\s*#?\s*\d+\s*\**\s*[:.)\-–]*\s*\**\s*",
    re.IGNORECASE | re.MULTILINE,
)
_TITLE = re.compile(r"^\s*(?:title\s*:.*|#{1,6} .*|\*\*[^*\n]{1,80}\*\*)\s*$", re.IGNORECASE)
_TURN = re.compile(
    r"^\s*\**\s*(?:the\s+)?(human|user|person|customer|ai assistant|assistant|ai)\s*\**\s*:\s*\**",
    re.IGNORECASE | re.MULTILINE,
)
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*(?=\s|$)")


# --------------------------------------------------------------------------- parsing


def split_stories(reply: str, expected: int) -> list[str]:
    """Single stories of a reply: split at ``Story N:`` markers (or ``---`` lines, or blank
    lines when several stories were asked for and no marker is present)."""
    text = reply.strip()
    if expected > 1 or _MARKER.search(text):
        parts = [p for p in _MARKER.split(text) if p.strip()]
        if len(parts) <= 1:
            parts = [p for p in re.split(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", text, flags=re.M)]
        if len(parts) <= 1 and expected > 1:
            parts = re.split(r"\n\s*\n", text)
    else:
        parts = [text]
    return [p.strip() for p in parts if p.strip()]


def clean_story(text: str) -> str:
    """One paragraph: drop title lines and wrapping quotes, join lines, trim a cut-off end."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    while lines and _TITLE.match(lines[0]):
        lines = lines[1:]
    out = " ".join(ln.strip() for ln in lines)
    out = re.sub(r"\s+", " ", out).strip()
    if len(out) > 1 and out[0] == out[-1] == '"' and out.count('"') == 2:
        out = out[1:-1].strip()
    return trim_unfinished(out)


def trim_unfinished(text: str) -> str:
    """Cut a text that stops mid-sentence (the author hit its token limit) at its last full
    sentence; a text with no full sentence is returned as is (then usually too short)."""
    t = text.rstrip()
    if not t or t[-1] in ".!?…" or (len(t) > 1 and t[-1] in "\"'”’)" and t[-2] in ".!?…,"):
        return t
    ends = list(_SENTENCE_END.finditer(t))
    return t[: ends[-1].end()].strip() if ends else t


def parse_dialogue(reply: str) -> list[dict[str, str]] | None:
    """Turns of a ``Human:``/``Assistant:`` dialogue, or None if the reply is not one."""
    marks = list(_TURN.finditer(reply))
    turns: list[dict[str, str]] = []
    for i, m in enumerate(marks):
        nxt = marks[i + 1] if i + 1 < len(marks) else None
        role = (
            "user" if m.group(1).lower() in {"human", "user", "person", "customer"} else "assistant"
        )
        content = reply[m.end() : nxt.start() if nxt else len(reply)]
        content = re.sub(r"\s+", " ", content.replace("**", "")).strip().strip('"“”')
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += " " + content
        else:
            turns.append({"role": role, "content": content})
    if len(turns) < 2 or turns[0]["role"] != "user":
        return None
    if turns[-1]["role"] == "assistant":
        turns[-1]["content"] = trim_unfinished(turns[-1]["content"])
    return turns


# --------------------------------------------------------------------------- emotion words


@cache
def _forbidden() -> dict[str, list[str]]:
    data = json.loads(
        resources.files("emovec.data").joinpath("prompts").joinpath("forbidden.json").read_text()
    )
    data.pop("_about", None)
    return data


def _word(word: str) -> str:
    """A regex for ``word`` in which a hyphen or a space also matches the other."""
    return re.escape(word).replace(r"\-", r"[\s-]").replace(r"\ ", r"[\s-]")


@cache
def emotion_word_pattern(emotion: str) -> re.Pattern:
    """The emotion word, its regular inflections and its listed synonyms, as whole words."""
    stems = [emotion] + ([emotion[:-1] + "i"] if emotion.endswith("y") else [])
    suffix = r"(?:s|ly|ness|ed|d|er|est|ful|ty|ily|ment|ies|ing)?"
    forms = [_word(s) + suffix for s in stems]
    for word in _forbidden().get(emotion, []):
        forms.append(_word(word.rstrip("*")) + (r"\w*" if word.endswith("*") else ""))
    return re.compile(r"\b(?:" + "|".join(forms) + r")\b", re.IGNORECASE)


#: Catalog words whose everyday sense is not an emotion ("what kind of", "the content").
EVERYDAY_SENSES = {"kind", "content", "patient", "safe", "alert", "stuck", "sensitive"}


@cache
def _any_emotion_pattern() -> re.Pattern:
    words = sorted(set(catalog.emotions()) - EVERYDAY_SENSES, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(_word(w) for w in words) + r")\b", re.IGNORECASE)


def any_emotion_word(text: str) -> str | None:
    """The first catalog emotion word in ``text`` (everyday senses aside), or None."""
    match = _any_emotion_pattern().search(text)
    return match.group(0) if match else None


# --------------------------------------------------------------------------- filters


def junk_reason(text: str) -> str | None:
    """Why a text is not prose (mostly symbols, or looping on itself), or None."""
    visible = [c for c in text if not c.isspace()]
    if not visible or sum(c.isalpha() for c in visible) < 0.7 * len(visible):
        return "junk"
    words = re.findall(r"\w+", text.lower())
    grams = list(zip(words, words[1:], words[2:], strict=False))
    if len(grams) >= 12 and len(set(grams)) < 0.6 * len(grams):
        return "repetitive"
    return None


@dataclass
class Filters:
    """Item filters; each rejection reason is counted in the manifest."""

    min_words: int = 60
    max_words: int = 180
    near_duplicate: float = 0.6  # Jaccard similarity of word 3-gram sets
    require_absent_emotion_word: bool = True


def _prose_reason(text: str, filters: Filters) -> str | None:
    """The checks stories and dialogues share: prose, within the word limits."""
    if reason := junk_reason(text):
        return reason
    words = len(text.split())
    if words < filters.min_words:
        return "too_short"
    if words > filters.max_words:
        return "too_long"
    return None


def check_story(text: str, emotion: str, filters: Filters) -> str | None:
    """Reason to reject one (cleaned) story, not counting near-duplicates; None to keep it."""
    if _REFUSAL.search(text[:200]):
        return "refusal"
    if reason := _prose_reason(text, filters):
        return reason
    if filters.require_absent_emotion_word and emotion_word_pattern(emotion).search(text):
        return "names_emotion"
    return None


def check_dialogue(turns: list[dict[str, str]] | None, filters: Filters) -> str | None:
    """Reason to reject one parsed dialogue (None: not a dialogue); None to keep it."""
    if turns is None:
        return "not_a_dialogue"
    text = " ".join(t["content"] for t in turns)
    if _REFUSAL.search(turns[-1]["content"][:200]) and len(text.split()) < 60:
        return "refusal"
    if reason := _prose_reason(text, filters):
        return reason
    if _any_emotion_pattern().search(text):
        return "emotion_word"
    return None


def _shingles(text: str) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(g) for g in zip(words, words[1:], words[2:], strict=False)} or {hash(text)}


class NearDuplicates:
    """Near-duplicate detection by word 3-gram Jaccard similarity, within a group (an emotion):
    an inverted index keeps it fast for thousands of items per group."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.groups: dict[str, tuple[list[set[int]], dict[int, list[int]]]] = {}

    def seen(self, group: str, text: str) -> bool:
        """True if ``text`` nearly duplicates an item already added to ``group``; else adds it."""
        items, index = self.groups.setdefault(group, ([], {}))
        grams = _shingles(text)
        overlap: dict[int, int] = {}
        for g in grams:
            for j in index.get(g, ()):
                overlap[j] = overlap.get(j, 0) + 1
        for j, common in overlap.items():
            if common / (len(grams) + len(items[j]) - common) >= self.threshold:
                return True
        for g in grams:
            index.setdefault(g, []).append(len(items))
        items.append(grams)
        return False


# --------------------------------------------------------------------------- selection


def items_of(
    kind: str, record: dict[str, Any], filters: Filters
) -> Iterator[tuple[dict, str | None]]:
    """The items of one reply record with a reject reason each (None: accepted so far)."""
    reply, n, meta = record["reply"], record["n"], record["meta"]
    base = {**meta, "request": record["key"]}
    if kind == NEUTRAL:
        turns = parse_dialogue(reply)
        reason = check_dialogue(turns, filters)
        yield ({**base, "turns": turns} if turns else {**base, "text": reply}), reason
        return
    stories = split_stories(reply, n)
    if not stories:
        yield {**base, "text": reply}, "empty"
        return
    for i, raw in enumerate(stories):
        text = clean_story(raw)
        item = {**base, "item": i, "text": text or raw}
        if i >= n:
            yield item, "extra"
        elif not text:
            yield item, "empty"
        else:
            yield item, check_story(text, meta["emotion"], filters)


def select(
    kind: str, records: Sequence[dict[str, Any]], filters: Filters
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Accepted items, rejected items (with ``reason``) and counts, in request order."""
    dupes = NearDuplicates(filters.near_duplicate)
    accepted, rejected = [], []
    counts: dict[str, int] = {}
    for record in sorted(records, key=lambda r: r["index"]):
        for item, reason in items_of(kind, record, filters):
            if reason is None:
                text = item.get("text") or " ".join(t["content"] for t in item["turns"])
                if dupes.seen(item.get("emotion", ""), text):
                    reason = "near_duplicate"
            if reason is None:
                accepted.append(item)
            else:
                rejected.append({**item, "reason": reason})
                counts[reason] = counts.get(reason, 0) + 1
    return accepted, rejected, {"accepted": len(accepted), "rejected": counts}
