"""A resumable corpus run: ask the author every request not yet in the reply log, then derive
the corpus files and the manifest from the log (:func:`finish`).

Determinism: a local author generates fixed batches (request ``i`` is always in batch
``i // batch_size``) seeded from (seed, the batch's first request key), so a batch redone after
a kill gives the same tokens; an endpoint request carries a seed from (seed, its key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emovec.authoring.authors import EndpointAuthor, LocalAuthor, Sampling
from emovec.authoring.design import (
    NEUTRAL,
    PROMPTS_VERSION,
    STORIES,
    AuthoringError,
    NeutralDesign,
    Request,
    StoryDesign,
    derive_seed,
    templates_of,
)
from emovec.authoring.filters import Filters, items_of, select
from emovec.authoring.store import (
    FORMAT,
    MANIFEST,
    ReplyLog,
    read_manifest,
    records_hash,
    write_json_atomic,
    write_jsonl_atomic,
)
from emovec.openai_compat import public_url


@dataclass
class RunResult:
    """What a run did and where the corpus is."""

    folder: Path
    kind: str
    requests: int
    generated: int
    counts: dict[str, Any] = field(default_factory=dict)
    complete: bool = True


def _public_identity(identity: Any) -> Any:
    """A stored author identity as :func:`emovec.openai_compat.public_url` would have written
    it (manifests from before it kept credentials in the URL; they still match the same
    endpoint)."""
    if isinstance(identity, dict) and identity.get("type") == "endpoint":
        url = identity.get("url")
        if isinstance(url, str):
            return {**identity, "url": public_url(url)}
    return identity


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
    section = {
        "params": params,
        "prompts": {"version": prompts_version, "templates": templates_of(kind, prompts_version)},
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


def _generate_local(
    todo: Sequence[Request],
    requests: Sequence[Request],
    author: LocalAuthor,
    sampling: Sampling,
    seed: int,
    note: Callable,
) -> None:
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


async def _generate_endpoint(
    todo: Sequence[Request], author: EndpointAuthor, sampling: Sampling, seed: int, note: Callable
) -> None:
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
