"""Writing a corpus with a model as author: the study's design, resumable, filtered, seeded.

The study had the studied model write its own stories (emotions x topics x stories per topic)
and its own neutral dialogues. Here any author can write them: the studied model, another
local model, or an OpenAI-compatible chat endpoint.

A run is a fixed, ordered list of requests (one prompt each, asking for one or more stories).
Its output folder holds (see docs/corpus.md):

- ``<kind>.replies.jsonl``: the raw reply of every finished request, appended and fsynced as
  requests finish. It is the only state of a run: a killed run restarts from it, dropping a
  half-written last line.
- ``<kind>.jsonl`` (``stories.jsonl`` / ``neutral.jsonl``) and ``<kind>.rejects.jsonl``: the
  accepted items and the rejected ones with their reason, derived from the replies in request
  order when the run finishes, so they do not depend on the order requests finished in.
- ``manifest.json``: author, prompts (version and text), parameters, counts, content hash.

Determinism: a local author generates fixed batches (request ``i`` is always in batch
``i // batch_size``) seeded from (seed, the batch's first request key), so a batch redone after
a kill gives the same tokens; an endpoint request carries a seed from (seed, its key).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from emovec import catalog
from emovec.files import AppendLog, write_atomic

PROMPTS_VERSION = "v1"
STORIES, NEUTRAL = "stories", "neutral"
KINDS = (STORIES, NEUTRAL)
_TEMPLATE_PREFIX = {STORIES: "story_", NEUTRAL: "neutral"}
MANIFEST = "manifest.json"
FORMAT = "emovec-corpus/1"


class AuthoringError(RuntimeError):
    """A corpus run that cannot go on: unreachable or broken author, full disk, wrong folder."""


# --------------------------------------------------------------------------- design, prompts


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


# --------------------------------------------------------------------------- parsing, filters

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


@cache
def _forbidden() -> dict[str, list[str]]:
    data = json.loads(
        resources.files("emovec.data").joinpath("prompts").joinpath("forbidden.json").read_text()
    )
    data.pop("_about", None)
    return data


@cache
def emotion_word_pattern(emotion: str) -> re.Pattern:
    """The emotion word, its regular inflections and its listed synonyms, as whole words."""
    stems = [emotion] + ([emotion[:-1] + "i"] if emotion.endswith("y") else [])
    suffix = r"(?:s|ly|ness|ed|d|er|est|ful|ty|ily|ment|ies|ing)?"
    forms = [re.escape(s).replace(r"\-", r"[\s-]").replace(r"\ ", r"[\s-]") + suffix for s in stems]
    for word in _forbidden().get(emotion, []):
        w = re.escape(word.rstrip("*")).replace(r"\-", r"[\s-]").replace(r"\ ", r"[\s-]")
        forms.append(w + (r"\w*" if word.endswith("*") else ""))
    return re.compile(r"\b(?:" + "|".join(forms) + r")\b", re.IGNORECASE)


#: Catalog words whose everyday sense is not an emotion ("what kind of", "the content").
EVERYDAY_SENSES = {"kind", "content", "patient", "safe", "alert", "stuck", "sensitive"}


@cache
def _any_emotion_pattern() -> re.Pattern:
    words = sorted(set(catalog.emotions()) - EVERYDAY_SENSES, key=len, reverse=True)
    alts = [re.escape(w).replace(r"\-", r"[\s-]").replace(r"\ ", r"[\s-]") for w in words]
    return re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)


def any_emotion_word(text: str) -> str | None:
    """The first catalog emotion word in ``text`` (everyday senses aside), or None."""
    match = _any_emotion_pattern().search(text)
    return match.group(0) if match else None


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


def check_story(text: str, emotion: str, filters: Filters) -> str | None:
    """Reason to reject one (cleaned) story, not counting near-duplicates; None to keep it."""
    if _REFUSAL.search(text[:200]):
        return "refusal"
    if reason := junk_reason(text):
        return reason
    words = len(text.split())
    if words < filters.min_words:
        return "too_short"
    if words > filters.max_words:
        return "too_long"
    if filters.require_absent_emotion_word and emotion_word_pattern(emotion).search(text):
        return "names_emotion"
    return None


def check_dialogue(turns: list[dict[str, str]] | None, filters: Filters) -> str | None:
    if turns is None:
        return "not_a_dialogue"
    text = " ".join(t["content"] for t in turns)
    if _REFUSAL.search(turns[-1]["content"][:200]) and len(text.split()) < 60:
        return "refusal"
    if reason := junk_reason(text):
        return reason
    words = len(text.split())
    if words < filters.min_words:
        return "too_short"
    if words > filters.max_words:
        return "too_long"
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


def select(kind: str, records: Sequence[dict[str, Any]], filters: Filters):
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


# --------------------------------------------------------------------------- authors


@dataclass
class Sampling:
    """Sampling settings shared by every author (recorded: they change the text)."""

    max_new_tokens: int = 220
    temperature: float = 0.8
    top_p: float = 0.95


class LocalAuthor:
    """A local model (the studied one, or any other ``load_model`` spec) writing in batches."""

    batched = True

    def __init__(self, lm, batch_size: int = 8):
        if batch_size < 1:
            raise AuthoringError(f"batch size must be at least 1, got {batch_size}")
        self.lm, self.batch_size = lm, batch_size

    def identity(self) -> dict[str, Any]:
        return {"type": "local", "name": self.lm.name, "fingerprint": self.lm.fingerprint}

    def write_batch(self, prompts_: list[str], sampling: Sampling, seed: int) -> list[str]:
        from emovec.steering import generate

        if sampling.temperature > 0 and sampling.top_p != 0.95:
            raise AuthoringError("local authors sample with top_p 0.95")
        replies = generate(
            self.lm,
            prompts_,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            seed=seed,
        )
        return list(replies)


class EndpointAuthor:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp, a hosted API, ``emovec corpus
    serve``), called with bounded concurrency, retries with exponential backoff, ``Retry-After``
    on 429/503, and a timeout per request."""

    batched = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout: float = 120.0,
        backoff: float = 1.0,
    ):
        if concurrency < 1:
            raise AuthoringError(f"concurrency must be at least 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        #: The URL as stored in the manifest and shown in messages: without credentials.
        self.public_url = public_url(self.base_url)
        self.model, self.api_key = model, api_key
        self.concurrency, self.max_retries = concurrency, max_retries
        self.timeout, self.backoff = timeout, backoff

    def identity(self) -> dict[str, Any]:
        return {"type": "endpoint", "url": self.public_url, "model": self.model}

    async def complete(self, client, prompt: str, sampling: Sampling, seed: int) -> str:
        """One chat completion's text; raises AuthoringError after the last retry."""
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
        }
        problem = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2**attempt * (0.5 + random.random() / 2)
            try:
                resp = await client.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.public_url} ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code == 200:
                    text = _completion_text(resp)
                    if text is not None:
                        return text
                    problem = f"a reply that is not a chat completion: {resp.text[:120]!r}"
                elif resp.status_code in (429, 500, 502, 503, 504):
                    problem = f"HTTP {resp.status_code}: {resp.text[:120]}"
                    wait = max(wait, _retry_after(resp) or 0)
                else:
                    raise AuthoringError(
                        f"endpoint {self.public_url} refused the request: HTTP "
                        f"{resp.status_code}: {resp.text[:200]} (check the URL, model and API key)"
                    )
            if attempt < self.max_retries:
                await asyncio.sleep(min(wait, 120.0))
        raise AuthoringError(
            f"endpoint gave up after {self.max_retries + 1} tries: {problem}; "
            "finished requests are saved, rerun the same command to continue"
        )

    def client(self):
        httpx = need_endpoint_extra("httpx")

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency)
        return httpx.AsyncClient(timeout=self.timeout, headers=headers, limits=limits)


def public_url(url: str) -> str:
    """``url`` without what may be a secret: user and password (``https://user:key@host``),
    query string and fragment. The manifest and every message name the endpoint this way."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _public_identity(identity: Any) -> Any:
    """A stored author identity as :func:`public_url` would have written it (manifests from
    before it kept credentials in the URL; they still match the same endpoint)."""
    if isinstance(identity, dict) and identity.get("type") == "endpoint":
        url = identity.get("url")
        if isinstance(url, str):
            return {**identity, "url": public_url(url)}
    return identity


def need_endpoint_extra(module: str):
    """Import an optional dependency of endpoints, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for chat endpoints: pip install 'emovec[endpoint]'"
        ) from exc


def _completion_text(resp) -> str | None:
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _retry_after(resp) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- the run


class ReplyLog:
    """The append-only record of finished requests (one JSON line each, fsynced).

    An :class:`emovec.files.AppendLog`: a half-written last line (a kill mid-write) is cut
    off. A damaged line in the middle is refused, naming the line, rather than skipped: the
    log is the corpus's only copy of its replies, so a person should look at it first.
    """

    def __init__(self, path: Path):
        self.path = path
        self._log = AppendLog(path, required=("index",), warn=False)
        if self._log.damaged:
            raise AuthoringError(
                f"{self.path}:{self._log.damaged[0]}: damaged record in the middle of the file; "
                "delete that line and rerun"
            )
        self.records: dict[int, dict[str, Any]] = {r["index"]: r for r in self._log.records}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write records and fsync; on a full disk, cut back to the last whole line and explain."""
        try:
            self._log.extend(records)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise AuthoringError(
                    f"disk full while writing {self.path}: the {len(self.records)} requests "
                    "written before are safe; free some space and rerun the same command"
                ) from exc
            raise
        for r in records:
            self.records[r["index"]] = r


def write_json_atomic(path: Path, data: Any) -> None:
    _write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def write_jsonl_atomic(path: Path, records: Sequence[dict[str, Any]]) -> None:
    _write_atomic(
        path, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """:func:`emovec.files.write_atomic`, with a full disk explained in corpus terms."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise AuthoringError(
                f"disk full while writing {path}: the generated replies are safe; "
                "free some space and rerun the same command"
            ) from exc
        raise


def records_hash(stories: Sequence[dict], neutral: Sequence[dict]) -> str:
    """The content hash ``Corpus.hash`` gives for these records (recorded in vector files)."""
    from emovec.corpus import Corpus

    return Corpus(list(stories), list(neutral)).hash


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        return {"format": FORMAT}
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise AuthoringError(f"cannot read {path}: {exc}") from exc


@dataclass
class RunResult:
    """What a run did and where the corpus is."""

    folder: Path
    kind: str
    requests: int
    generated: int
    counts: dict[str, Any] = field(default_factory=dict)
    complete: bool = True


def write_corpus(
    folder: str | Path,
    design: StoryDesign | NeutralDesign,
    author: LocalAuthor | EndpointAuthor,
    sampling: Sampling | None = None,
    seed: int = 0,
    filters: Filters | None = None,
    prompts_version: str = PROMPTS_VERSION,
    progress: bool = False,
    max_requests: int | None = None,
) -> RunResult:
    """Generate (or continue) one part of a corpus in ``folder`` and write its files.

    ``max_requests`` stops after that many new requests (the run stays resumable).
    """
    kind = STORIES if isinstance(design, StoryDesign) else NEUTRAL
    sampling = sampling or Sampling()
    filters = filters or Filters(min_words=design.min_words, max_words=design.max_words)
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuthoringError(f"cannot create the corpus folder {folder}: {exc.strerror}") from exc
    requests = design.requests(prompts_version)
    params = {
        "design": asdict(design),
        "sampling": asdict(sampling),
        "seed": seed,
        "author": author.identity(),
        "prompts_version": prompts_version,
    }
    if author.batched:
        params["batch_size"] = author.batch_size
    manifest = read_manifest(folder)
    previous = manifest.get(kind, {}).get("params")
    if isinstance(previous, dict) and "author" in previous:
        previous = {**previous, "author": _public_identity(previous["author"])}
    if previous is not None and previous != params:
        changed = sorted(k for k in params if previous.get(k) != params[k])
        raise AuthoringError(
            f"{folder} already holds {kind} written with other settings ({', '.join(changed)}); "
            "rerun with the same settings to continue, or choose another --out folder"
        )
    text = prompts(prompts_version)
    section = {
        "params": params,
        "prompts": {
            "version": prompts_version,
            "templates": {k: v for k, v in text.items() if k.startswith(_TEMPLATE_PREFIX[kind])},
        },
        "filters": asdict(filters),
        "requests": len(requests),
        "complete": False,
    }
    manifest = {**manifest, "format": FORMAT, kind: {**manifest.get(kind, {}), **section}}
    write_json_atomic(folder / MANIFEST, manifest)

    log = ReplyLog(folder / f"{kind}.replies.jsonl")
    todo = [r for r in requests if r.index not in log.records]
    if max_requests is not None:
        todo = todo[:max_requests]
    generated = _generate(log, todo, requests, author, sampling, seed, kind, filters, progress)
    complete = len(log.records) == len(requests)
    counts = finish(folder, kind, filters, complete=complete)
    return RunResult(folder, kind, len(requests), generated, counts, complete)


def _record(req: Request, reply: str, author_seed: int) -> dict[str, Any]:
    return {
        "index": req.index,
        "key": req.key,
        "n": req.n,
        "meta": req.meta,
        "seed": author_seed,
        "reply": reply,
    }


def _generate(log, todo, requests, author, sampling, seed, kind, filters, progress) -> int:
    from emovec.progress import request_progress

    done = 0
    with request_progress(len(todo), f"writing {kind}", enabled=progress) as advance:

        def note(records: list[dict[str, Any]]) -> None:
            nonlocal done
            log.append(records)
            done += len(records)
            outcome = [reason for r in records for _, reason in items_of(kind, r, filters)]
            advance(len(records), sum(r is None for r in outcome), len(outcome))

        if author.batched:
            _generate_local(todo, requests, author, sampling, seed, note)
        else:
            asyncio.run(_generate_endpoint(todo, author, sampling, seed, note))
    return done


def _generate_local(todo, requests, author, sampling, seed, note: Callable) -> None:
    """Fixed batches by request index: batch b is always requests[b*size:(b+1)*size]."""
    size = author.batch_size
    wanted = {r.index for r in todo}
    for b in sorted({r.index // size for r in todo}):
        batch = requests[b * size : (b + 1) * size]
        batch_seed = derive_seed(seed, batch[0].key)
        replies = author.write_batch([r.prompt for r in batch], sampling, batch_seed)
        note(
            [
                _record(r, t, batch_seed)
                for r, t in zip(batch, replies, strict=True)
                if r.index in wanted
            ]
        )


async def _generate_endpoint(todo, author: EndpointAuthor, sampling, seed, note: Callable) -> None:
    gate = asyncio.Semaphore(author.concurrency)

    async with author.client() as client:

        async def one(req: Request) -> None:
            async with gate:
                s = derive_seed(seed, req.key)
                reply = await author.complete(client, req.prompt, sampling, s)
            note([_record(req, reply, s)])

        tasks = [asyncio.create_task(one(r)) for r in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def finish(
    folder: str | Path, kind: str, filters: Filters | None = None, complete: bool | None = None
) -> dict:
    """Parse and filter the replies written so far into ``<kind>.jsonl`` and its rejects, and
    update the manifest (counts and hashes). Deterministic in the replies, not in their order."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    section = manifest.get(kind)
    if section is None:
        raise AuthoringError(f"{folder} holds no {kind} run (no {kind} section in {MANIFEST})")
    filters = filters or Filters(**section["filters"])
    log = ReplyLog(folder / f"{kind}.replies.jsonl")
    accepted, rejected, counts = select(kind, list(log.records.values()), filters)
    write_jsonl_atomic(folder / f"{kind}.jsonl", accepted)
    write_jsonl_atomic(folder / f"{kind}.rejects.jsonl", rejected)
    counts |= {
        "requests_done": len(log.records),
        "items_seen": len(accepted) + sum(counts["rejected"].values()),
    }
    counts["acceptance"] = round(counts["accepted"] / max(counts["items_seen"], 1), 4)
    if kind == STORIES:
        per = {}
        for s in accepted:
            per[s["emotion"]] = per.get(s["emotion"], 0) + 1
        emotions = section["params"]["design"]["emotions"]
        counts["per_emotion_min"] = min((per.get(e, 0) for e in emotions), default=0)
        counts["emotions_without_stories"] = [e for e in emotions if e not in per]
    if complete is None:
        complete = len(log.records) == section["requests"]
    section = {**section, "filters": asdict(filters), "counts": counts, "complete": complete}
    section["hash"] = records_hash(accepted, []) if kind == STORIES else records_hash([], accepted)
    manifest[kind] = section
    stories_file, neutral_file = folder / f"{STORIES}.jsonl", folder / f"{NEUTRAL}.jsonl"
    if stories_file.exists():
        from emovec.corpus import read_jsonl

        neutral = read_jsonl(neutral_file) if neutral_file.exists() else []
        manifest["hash"] = records_hash(read_jsonl(stories_file), neutral)
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(folder / MANIFEST, manifest)
    return counts
