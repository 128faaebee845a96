"""Corpora: emotion stories and emotionally neutral dialogues, as records plus a content hash.

Format (documented in docs/corpus.md): a corpus is a folder holding ``stories.jsonl`` or a
``stories/`` folder of ``*.jsonl`` parts, and ``neutral.jsonl``. A story record is
``{"emotion": str, "text": str, "topic"?: str, "narration"?: "first"|"third"}``; a neutral
record is ``{"turns": [{"role": "user"|"assistant", "content": str}, ...], "topic"?: str}`` or
``{"text": str}``. An optional ``neutral_stories.jsonl`` holds emotionally neutral stories
(``{"text": str, "topic"?: str}``), an alternative denoising source. A single ``.jsonl`` file
of stories is a corpus without neutral dialogues.
A folder written by ``emovec corpus stories|neutral`` (:mod:`emovec.authoring`) also holds
``manifest.json`` (kept as :attr:`Corpus.manifest`), the raw replies and the rejected items,
which loading ignores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from emovec import catalog
from emovec.errors import EmovecError
from emovec.models import PLAIN_CHAT_ROLES

#: The bundled corpora: v1 (6 stories per emotion, topics drawn per emotion) and v2 (the
#: crossed design: every emotion on the same 24 topics, plus neutral stories on them).
CURATED_V1 = "curated-v1"
CURATED_V2 = "curated-v2"
#: What ``"curated"`` names: the bundled corpus that the defaults are chosen on.
CURATED = "curated"
CURATED_DEFAULT = CURATED_V2
BUNDLED = {CURATED_V1: "corpus", CURATED_V2: "corpus_v2"}


class CorpusError(EmovecError, ValueError):
    """A corpus that cannot be read or does not follow the format."""


@dataclass
class Corpus:
    """Stories (one emotion each) and neutral dialogues, with where they came from."""

    stories: list[dict[str, Any]]
    neutral: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Emotionally neutral stories (same style as the emotion stories), for denoising.
    neutral_stories: list[dict[str, Any]] = field(default_factory=list)

    @property
    def emotions(self) -> list[str]:
        """Emotions present, in catalog order (unknown names were refused on load)."""
        present = {s["emotion"] for s in self.stories}
        return [e for e in catalog.emotions() if e in present]

    def stories_of(self, emotion: str) -> list[dict[str, Any]]:
        return [s for s in self.stories if s["emotion"] == emotion]

    def neutral_texts(self) -> list[str]:
        """Neutral dialogues rendered as plain ``Human:``/``Assistant:`` text, as in the study."""
        return [render_dialogue(d) for d in self.neutral]

    @property
    def hash(self) -> str:
        """Content hash of every record (order-sensitive), recorded in vector files."""
        digest = hashlib.sha256()
        tail = [{"--": "neutral stories"}, *self.neutral_stories] if self.neutral_stories else []
        for record in [*self.stories, {"--": "neutral"}, *self.neutral, *tail]:
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    def subset(self, emotions: list[str]) -> Corpus:
        keep = set(emotions)
        stories = [s for s in self.stories if s["emotion"] in keep]
        return Corpus(stories, self.neutral, self.source, self.manifest, self.neutral_stories)

    def first_topics(self, n: int) -> Corpus:
        """Only the stories and neutral stories on the first ``n`` topics the stories use.

        Record order is kept, so a corpus that grew by new topics gives back, exactly and with
        the same hash, the corpus earlier results were measured on (corpus v2 was first
        designed on 16 topics and later grown to 24).
        """
        order = list(dict.fromkeys(s.get("topic") for s in self.stories))
        if None in order:
            raise CorpusError("first_topics needs a topic on every story; some have none")
        if not 1 <= n <= len(order):
            raise CorpusError(f"asked for the first {n} topics; the corpus has {len(order)}")
        keep = set(order[:n])
        return Corpus(
            [s for s in self.stories if s["topic"] in keep],
            self.neutral,
            f"{self.source}, first {n} topics",
            self.manifest,
            [s for s in self.neutral_stories if s.get("topic") in keep],
        )


def render_dialogue(record: dict[str, Any]) -> str:
    if "text" in record:
        return record["text"]
    return "\n\n".join(
        f"{PLAIN_CHAT_ROLES.get(t['role'], t['role'])}: {t['content']}" for t in record["turns"]
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file, naming the file and line of the first bad record."""
    records = []
    try:
        lines = path.read_text("utf-8").split("\n")  # not splitlines: U+2028 is valid in JSON
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
            raise CorpusError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise CorpusError(f"{path}:{number}: expected a JSON object per line")
        if "\\u" in line and not _encodable(record):
            raise CorpusError(f"{path}:{number}: text with an unpaired surrogate (\\ud800...)")
        records.append(record)
    return records


def _encodable(record: dict[str, Any]) -> bool:
    """Whether a record's strings are valid Unicode (JSON escapes can make lone surrogates)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        return False
    return True


#: Roles a neutral dialogue turn may have (those a plain-text rendering can name).
TURN_ROLES = frozenset(PLAIN_CHAT_ROLES)


def _check_optional(r: dict[str, Any], where: str) -> None:
    """``topic`` (a string) and ``narration`` ("first" or "third"), when a record has them."""
    if "topic" in r and not isinstance(r["topic"], str):
        raise CorpusError(f"{where}: 'topic' must be a string")
    if "narration" in r and r["narration"] not in ("first", "third"):
        raise CorpusError(f'{where}: \'narration\' must be "first" or "third"')


def _check_stories(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if not records:
        raise CorpusError(f"{where}: no stories (the stories files hold no records)")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise CorpusError(f"{where}: story {i} is not a JSON object")
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            raise CorpusError(f"{where}: story {i} has no 'text'")
        if not isinstance(r.get("emotion"), str):
            raise CorpusError(f"{where}: story {i} has no 'emotion'")
        _check_optional(r, f"{where}: story {i}")
        try:
            r["emotion"] = catalog.resolve(r["emotion"])
        except catalog.UnknownEmotionError as exc:
            raise CorpusError(f"{where}: story {i}: {exc}") from exc
    return records


def _check_neutral(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise CorpusError(f"{where}: neutral record {i} is not a JSON object")
        if "text" in r:  # a text wins over turns when rendering, so it must be usable
            if not isinstance(r["text"], str) or not r["text"].strip():
                raise CorpusError(f"{where}: neutral record {i}: 'text' must be a non-empty string")
        else:
            turns = r.get("turns")
            ok_turns = (
                isinstance(turns, list)
                and bool(turns)
                and all(
                    isinstance(t, dict)
                    and isinstance(t.get("content"), str)
                    and isinstance(t.get("role"), str)
                    and t["role"] in TURN_ROLES
                    for t in turns
                )
            )
            if not ok_turns:
                raise CorpusError(
                    f"{where}: neutral record {i} needs 'turns' (a list of {{'role': "
                    f"{'|'.join(sorted(TURN_ROLES))}, 'content': text}}) or 'text'"
                )
        _check_optional(r, f"{where}: neutral record {i}")
    return records


def load_corpus(spec: str | Path = CURATED) -> Corpus:
    """Load a bundled corpus (``"curated"`` = v2, ``"curated-v1"``, ``"curated-v2"``), a corpus
    folder, or a stories file."""
    name = CURATED_DEFAULT if str(spec) == CURATED else str(spec)
    if name in BUNDLED:
        root = resources.files("emovec.data").joinpath(BUNDLED[name])
        stories = []
        for part in sorted(root.joinpath("stories").iterdir(), key=lambda p: p.name):
            if part.name.endswith(".jsonl"):
                stories += read_jsonl(Path(str(part)))
        neutral = read_jsonl(Path(str(root.joinpath("neutral.jsonl"))))
        extra = root.joinpath("neutral_stories.jsonl")
        neutral_stories = read_jsonl(Path(str(extra))) if extra.is_file() else []
        return Corpus(
            _check_stories(stories, name),
            _check_neutral(neutral, name),
            name,
            neutral_stories=_check_neutral(neutral_stories, name),
        )
    path = Path(spec).expanduser()
    if path.is_file():
        return Corpus(_check_stories(read_jsonl(path), str(path)), [], str(path))
    if not path.is_dir():
        raise CorpusError(
            f"corpus not found: {spec} (give 'curated', 'curated-v1', 'curated-v2', a corpus "
            "folder, or a stories .jsonl file)"
        )
    parts = [path / "stories.jsonl"] if (path / "stories.jsonl").is_file() else []
    if (path / "stories").is_dir():
        parts += sorted((path / "stories").glob("*.jsonl"))
    if not parts:
        if (path / "stories.replies.jsonl").is_file():
            raise CorpusError(
                f"{path}: stories are still being written; rerun the same `emovec corpus "
                "stories` command to finish them (or add --finish to use what is done)"
            )
        raise CorpusError(f"{path}: no stories.jsonl or stories/*.jsonl in this folder")
    stories = [r for p in parts for r in read_jsonl(p)]
    neutral_file = path / "neutral.jsonl"
    neutral = read_jsonl(neutral_file) if neutral_file.is_file() else []
    extra = path / "neutral_stories.jsonl"
    neutral_stories = read_jsonl(extra) if extra.is_file() else []
    manifest = _read_manifest(path / "manifest.json")
    return Corpus(
        _check_stories(stories, str(path)),
        _check_neutral(neutral, str(path)),
        str(path),
        manifest,
        _check_neutral(neutral_stories, str(path)),
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    """A corpus folder's manifest (author, prompts, parameters, counts), or {} if none."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise CorpusError(f"{path}: expected a JSON object")
    return manifest
