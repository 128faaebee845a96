"""An OpenAI-compatible chat endpoint that steers and scores each request with emotion vectors.

``emovec api`` serves ``POST /v1/chat/completions`` as :mod:`emovec.apps.chat_server` does (same
validation, bounds, queue, control-token check and cross-site guard: it is that endpoint with
another :class:`~emovec.apps.chat_server.Backend`), plus:

- an optional ``emovec`` object per request (``steer``, ``positions``, ``layers``,
  ``monitor``, ``alerts``), validated strictly: unknown fields, unknown emotions, layers the
  vector file lacks and out-of-range strengths get one 400 naming the field;
- per-token emotion scores, in each chunk of a streamed reply and, with a summary, in the
  ``emovec`` field of a whole reply; the scores are :class:`emovec.scoring.CosineScorer`'s
  centred cosines, as :func:`emovec.read` gives for the same tokens;
- ``GET /v1/emovec``: the vector file's emotions and layers, and the bounds;
- batching: requests arriving within a short window are generated together, left-padded,
  each row with its own steering (:func:`emovec.steering.steer_rows`). Greedy rows get the
  tokens they get alone, and a request without ``emovec`` gets what the plain server gives.
"""

# No ``from __future__ import annotations``: pydantic reads the annotations of the request
# models, which are built inside functions (fastapi and pydantic are optional extras).
import asyncio
import collections
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emovec import catalog
from emovec.apps.chat_server import (
    Backend,
    ChatLimits,
    completion_body,
    create_app,
    error_response,
    first_problem,
    request_sampling,
    requested_tokens,
)
from emovec.errors import InputError
from emovec.generation import generate_ids
from emovec.hooks import residual_hooks
from emovec.models import LanguageModel
from emovec.scoring import CosineScorer
from emovec.steering import POSITIONS, steer_rows
from emovec.vectors import EmotionVectors

#: The fields of a request's ``emovec`` object (anything else is refused).
EMOVEC_FIELDS = ("steer", "positions", "layers", "monitor", "alerts")


@dataclass(frozen=True)
class ApiLimits(ChatLimits):
    """The chat endpoint's bounds plus those of steering, scoring and batching."""

    queue: int = 32  # requests running or waiting (batches drain many at once)
    max_strength: float = 2.0  # |strength| per emotion, in residual norms
    steer_emotions: int = 16
    steer_layers: int = 8
    monitor_emotions: int = 32
    alerts: int = 16  # rules per request
    alert_events: int = 64  # firings reported per reply
    max_batch: int = 8  # rows per generate call (1: one request at a time)
    batch_window_s: float = 0.015  # how long the batcher waits for neighbours


def _emovec_model(limits: ApiLimits):
    """The pydantic model of a request's ``emovec`` object, with its bounds."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

    name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
    strength = Annotated[
        float, Field(ge=-limits.max_strength, le=limits.max_strength, allow_inf_nan=False)
    ]
    threshold = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]  # a cosine

    class AlertRule(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        emotion: name
        above: threshold | None = None
        below: threshold | None = None

        @model_validator(mode="after")
        def _one_threshold(self):
            if (self.above is None) == (self.below is None):
                raise ValueError("give exactly one of above or below")
            return self

    class EmovecOptions(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        steer: dict[name, strength] = Field(default_factory=dict, max_length=limits.steer_emotions)
        positions: Literal["all", "prompt", "generated"] = "all"
        layers: list[int] | None = Field(None, min_length=1, max_length=limits.steer_layers)
        monitor: list[name] = Field(default_factory=list, max_length=limits.monitor_emotions)
        alerts: list[AlertRule] = Field(default_factory=list, max_length=limits.alerts)

    return EmovecOptions


# --------------------------------------------------------------------------------------------
# Jobs, rows and the per-step work of one batched generate call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreAlert:
    """Report when an emotion's score crosses a threshold (each time it starts to hold)."""

    emotion: str
    above: float | None = None
    below: float | None = None

    def holds(self, score: float) -> bool:
        return score > self.above if self.above is not None else score < self.below

    @property
    def rule(self) -> str:
        return f"above {self.above:g}" if self.above is not None else f"below {self.below:g}"


@dataclass
class Job:
    """One admitted request as the batcher sees it; ``emit(kind, data)`` hands results back.

    ``emit`` gets ``("token", event)`` per reply token, then exactly one ``("done", result)``
    or ``("error", message)``; it is called from the generating thread.
    """

    prompt_ids: list[int]
    max_tokens: int
    sampling: dict[str, float]  # temperature (and top_p), see chat_server.request_sampling
    emit: Callable[[str, Any], None]
    seed: int | None = None
    steer: dict[str, float] = field(default_factory=dict)
    layers: list[int] | None = None
    positions: str = "all"
    watch: list[str] = field(default_factory=list)  # emotions scored per token
    alerts: list[ScoreAlert] = field(default_factory=list)
    alert_events: int = 64
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # its "done" or "error" has been emitted

    @property
    def sampled(self) -> bool:
        """Whether the job samples (temperature above 0) rather than decoding greedily."""
        return self.sampling.get("temperature", 0.0) > 0

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share one generate call (same sampling); a seeded
        sampled job runs alone, so that its seed alone decides its tokens."""
        if self.sampled and self.seed is not None:
            return ("seeded", id(self))
        return tuple(sorted(self.sampling.items()))


class _Row:
    """One job's state while its batch generates: tokens, text, scores, alerts."""

    def __init__(self, job: Job, columns: list[int], tokenizer: Any) -> None:
        self.job, self.columns, self.tokenizer = job, columns, tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.pending: int | None = None  # a scored row's token, waiting for its scores
        self.full = False  # max_tokens reached (a scored row still waits for the last scores)
        self.done = False
        self.generated = 0  # tokens the model produced, end-of-text included
        self.scores: list[np.ndarray] = []
        self.alerts: list[dict[str, Any]] = []
        self.holding = [False] * len(job.alerts)

    def deliver(self, token: int, scores: np.ndarray | None) -> None:
        """Take one reply token (and its scores when the job watches emotions)."""
        job = self.job
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            piece = ""
        else:
            piece, self.text = text[len(self.text) :], text
        event: dict[str, Any] = {"index": len(self.ids) - 1, "token_id": token, "text": piece}
        if job.watch:
            row = np.zeros(len(job.watch), np.float32) if scores is None else scores[self.columns]
            self.scores.append(row)
            event["scores"] = {e: round(float(v), 6) for e, v in zip(job.watch, row, strict=True)}
            fired = []
            for i, rule in enumerate(job.alerts):
                value = float(row[job.watch.index(rule.emotion)])
                holds = rule.holds(value)
                if holds and not self.holding[i] and len(self.alerts) < job.alert_events:
                    alert = {
                        "emotion": rule.emotion,
                        "rule": rule.rule,
                        "token": len(self.ids) - 1,
                        "score": round(value, 6),
                        "text": piece,
                    }
                    self.alerts.append(alert)
                    fired.append(alert)
                self.holding[i] = holds
            if fired:
                event["alerts"] = fired
        job.emit("token", event)

    def end(self, reason: str) -> None:
        """Finish the row and hand back the whole reply."""
        if self.done:
            return
        self.done = True
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        result: dict[str, Any] = {
            "text": full.strip(),
            "tail": full[len(self.text) :],  # text held back at the end (a split character)
            "finish_reason": reason,
            "prompt_tokens": len(self.job.prompt_ids),
            "completion_tokens": self.generated,
            "token_ids": list(self.ids),
        }
        if self.job.watch:
            scores = np.stack(self.scores) if self.scores else np.zeros((0, len(self.job.watch)))
            result["scores"] = scores
            result["alerts"] = self.alerts
        self.job.finished = True
        self.job.emit("done", result)


class _Step:
    """The stopping criterion of a batched ``generate``: delivers tokens, ends rows.

    Called after every step with the sequences so far. A row that watches emotions gets each
    token one step late, with its scores: the residual of a token is computed when it is fed
    back into the model, which the scoring hook sees during the next step (a scored row runs
    one step past its last token for that). Other rows get their tokens at once.
    """

    def __init__(self, rows: list[_Row], width: int, eos: Sequence[int]) -> None:
        self.rows, self.width, self.eos = rows, width, set(eos)
        self.latest: np.ndarray | None = None  # scores [batch, emotions] of the last fed token

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **_: Any) -> torch.Tensor:
        new = input_ids[:, -1].tolist()
        latest, self.latest = self.latest, None
        for r, row in enumerate(self.rows):
            if row.done:
                continue
            if row.job.cancel.is_set():
                row.end("cancelled")
                continue
            if row.pending is not None:
                row.deliver(row.pending, None if latest is None else latest[r])
                row.pending = None
                if row.full:
                    row.end("length")
                    continue
            row.generated += 1
            if new[r] in self.eos:
                row.end("stop")
                continue
            row.full = row.generated >= row.job.max_tokens
            if row.job.watch:
                row.pending = new[r]
            else:
                row.deliver(new[r], None)
                if row.full:
                    row.end("length")
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


# --------------------------------------------------------------------------------------------
# The batcher
# --------------------------------------------------------------------------------------------


class Batcher:
    """Collects jobs that arrive within ``window_s`` (up to ``max_batch``) and generates each
    group in one left-padded ``generate`` call, in a worker thread; ``max_batch=1`` generates
    one request at a time."""

    def __init__(
        self,
        lm: LanguageModel,
        vectors: EmotionVectors,
        max_batch: int = 8,
        window_s: float = 0.015,
    ) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        self.lm, self.vectors = lm, vectors
        self.max_batch, self.window_s = max_batch, max(0.0, float(window_s))
        self.eos = lm.eos_ids
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="emovec-api", daemon=True)
                self._thread.start()
        self._inbox.put(job)

    def close(self) -> None:
        """Stop the worker once the jobs submitted before are done (a later submit starts
        a new one)."""
        with self._start:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(None)
            thread.join(timeout=60)

    def _loop(self) -> None:
        waiting: list[Job] = []
        closing = False
        while True:
            if not waiting:
                if closing:
                    return
                job = self._inbox.get()
                if job is None:
                    return
                waiting.append(job)
            deadline = time.monotonic() + self.window_s
            while not closing and len(waiting) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    job = self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                else:
                    waiting.append(job)
            key = waiting[0].key
            batch = [j for j in waiting if j.key == key][: self.max_batch]
            chosen = {id(j) for j in batch}
            waiting = [j for j in waiting if id(j) not in chosen]
            self._run_safely(batch)

    def _run_safely(self, jobs: list[Job]) -> None:
        try:
            self.run(jobs)
        except Exception as exc:  # handed to every unfinished request, the server carries on
            message = f"generation failed: {type(exc).__name__}: {exc}"
            for job in jobs:
                if not job.finished:
                    job.finished = True
                    job.emit("error", message)

    def run(self, jobs: list[Job]) -> list[_Row]:
        """Generate the jobs together; each gets its tokens and one result through ``emit``."""
        lm, vectors, tok = self.lm, self.vectors, self.lm.tokenizer
        for job in jobs:
            if job.cancel.is_set():
                _Row(job, [], tok).end("cancelled")
        jobs = [job for job in jobs if not job.cancel.is_set()]
        if not jobs:
            return []
        self.batch_sizes.append(len(jobs))
        width = max(len(job.prompt_ids) for job in jobs)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor(
            [[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs]
        )
        watched = list(dict.fromkeys(e for job in jobs for e in job.watch))
        rows = [_Row(job, [watched.index(e) for e in job.watch], tok) for job in jobs]
        step = _Step(rows, width, self.eos)
        scoring: dict[int, Any] = {}
        if watched:
            scorer = CosineScorer(vectors, watched, vectors.default_layer, device=lm.device)

            def score(_layer: int, hidden: torch.Tensor, offset: int) -> None:
                if offset >= width:  # a decode step: the newest position is a reply token
                    step.latest = scorer(hidden[:, -1])

            scoring = {scorer.layer: score}
        steering = (
            steer_rows(
                lm,
                vectors,
                [job.steer or None for job in jobs],
                [job.layers for job in jobs],
                [job.positions for job in jobs],
                attention_mask=mask,
            )
            if any(job.steer for job in jobs)
            else nullcontext()
        )
        first = jobs[0]  # every job of a batch samples alike (Job.key)
        longest = max(job.max_tokens + (1 if job.watch else 0) for job in jobs)
        with steering, residual_hooks(lm.layers, scoring):
            generate_ids(
                lm,
                ids,
                mask,
                max_new_tokens=longest,
                seed=first.seed if first.sampled else None,
                stopping=[step],
                **first.sampling,
            )
        for row in rows:  # defensive: generate ended before the row did
            if row.pending is not None:
                row.deliver(row.pending, None)
                row.pending = None
            row.end("length")
        return rows


# --------------------------------------------------------------------------------------------
# The endpoint's backend
# --------------------------------------------------------------------------------------------


class SteeringBackend(Backend):
    """Answers chat requests through the :class:`Batcher`, with steering and scores."""

    streaming = True

    def __init__(self, lm: LanguageModel, vectors: EmotionVectors, limits: ApiLimits) -> None:
        super().__init__(lm)
        vectors.check_model(lm)
        self.vectors, self.limits = vectors, limits
        self.batcher = Batcher(lm, vectors, limits.max_batch, limits.batch_window_s)

    def request_model(self, base: type) -> type:
        options = _emovec_model(self.limits)

        class SteeredChatRequest(base):
            emovec: options | None = None

        return SteeredChatRequest

    def describe(self, errors: list[dict[str, Any]]) -> str:
        first = errors[0] if errors else {}
        if first.get("type") == "extra_forbidden" and tuple(first.get("loc", ()))[:1] == (
            "emovec",
        ):
            where = ".".join(str(p) for p in first["loc"])
            return f"{where}: unknown field; emovec takes {', '.join(EMOVEC_FIELDS)}"
        return first_problem(errors)

    def check(self, body) -> str | None:
        options = body.emovec
        if options is None:
            return None
        names = [("steer", e) for e in options.steer]
        names += [("monitor", e) for e in options.monitor]
        names += [(f"alerts.{i}.emotion", a.emotion) for i, a in enumerate(options.alerts)]
        for where, name in names:
            try:
                self.vectors.resolve(name)
            except catalog.UnknownEmotionError:
                close = catalog.suggest(name, self.vectors.emotions)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                return (
                    f"emovec.{where}: unknown emotion {name!r}{hint} (this server's vector file "
                    f"has {len(self.vectors.emotions)} emotions; GET /v1/emovec lists them)"
                )
        for layer in options.layers or []:
            if layer not in self.vectors.layers:
                return (
                    f"emovec.layers: layer {layer} is not in this server's vector file (it has "
                    f"layers {self.vectors.layers[0]}..{self.vectors.layers[-1]}; "
                    "GET /v1/emovec lists them)"
                )
        return None

    def add_routes(self, app) -> None:
        app.state.backend = self
        vectors, limits = self.vectors, self.limits

        @app.get("/v1/emovec")
        def emovec_info() -> dict[str, Any]:
            return {
                "emotions": vectors.emotions,
                "layers": vectors.layers,
                "reading_layer": vectors.default_layer,
                "steering_layer": vectors.default_steer_layer,
                "positions": list(POSITIONS),
                "fields": list(EMOVEC_FIELDS),
                "limits": {
                    "max_strength": limits.max_strength,
                    "steer_emotions": limits.steer_emotions,
                    "steer_layers": limits.steer_layers,
                    "monitor_emotions": limits.monitor_emotions,
                    "alerts": limits.alerts,
                    "alert_events": limits.alert_events,
                    "max_tokens": limits.max_tokens,
                    "prompt_tokens": limits.prompt_tokens,
                    "queue": limits.queue,
                },
                "batching": {
                    "max_batch": limits.max_batch,
                    "window_ms": limits.batch_window_s * 1000,
                },
            }

    def job(self, body, prompt_ids: list[int], emit: Callable[[str, Any], None]) -> Job:
        """The batcher's job for a validated request."""
        job = Job(
            prompt_ids=list(prompt_ids),
            max_tokens=requested_tokens(body),
            sampling=request_sampling(body),
            seed=body.seed,
            emit=emit,
            alert_events=self.limits.alert_events,
        )
        options = body.emovec
        if options is None:
            return job
        resolve = self.vectors.resolve
        job.steer = {resolve(e): float(s) for e, s in options.steer.items() if s != 0}
        job.layers = list(dict.fromkeys(options.layers)) if options.layers else None
        job.positions = options.positions
        job.alerts = [ScoreAlert(resolve(a.emotion), a.above, a.below) for a in options.alerts]
        job.watch = list(
            dict.fromkeys([resolve(e) for e in options.monitor] + [a.emotion for a in job.alerts])
        )
        return job

    async def respond(self, request, body, prompt_ids: list[int], model_id: str, release):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, data: Any) -> None:  # from the generating thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, data))
                if kind in ("done", "error"):
                    loop.call_soon_threadsafe(release)
            except RuntimeError:  # the event loop has closed (server shutting down)
                pass

        job = self.job(body, prompt_ids, emit)
        self.batcher.submit(job)
        if body.stream:
            from fastapi.responses import StreamingResponse

            return StreamingResponse(
                self._stream(job, events, body.emovec is not None, model_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        tokens: list[dict[str, Any]] = []
        while True:
            try:
                kind, data = await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()  # the client went away: the row ends at the next step
                continue
            if kind == "token":
                tokens.append(data)
            elif kind == "error":
                return error_response(500, data, kind="server_error")
            else:
                break
        reply = completion_body(
            model_id,
            data["text"],
            data["finish_reason"],
            data["prompt_tokens"],
            data["completion_tokens"],
        )
        if body.emovec is not None:
            reply["emovec"] = self._reply_extra(job, tokens, data)
        return reply

    def _reply_extra(self, job: Job, tokens: list[dict[str, Any]] | None, result: dict) -> dict:
        """The ``emovec`` field of a whole reply (``tokens``: its per-token entries; None in
        a stream's last chunk, whose earlier chunks carried them): the settings as applied,
        then, when scoring, the layer, emotions, summary and alerts."""
        extra: dict[str, Any] = {
            "steer": job.steer,
            "positions": job.positions,
            "layers": job.layers or ([self.vectors.default_steer_layer] if job.steer else []),
        }
        if tokens is not None:
            keys = ("token_id", "text", "scores")
            extra["tokens"] = [{k: t[k] for k in keys if k in t} for t in tokens]
        if job.watch:
            extra["layer"] = self.vectors.default_layer
            extra["emotions"] = job.watch
            extra["summary"] = _summary(job.watch, result["scores"])
            extra["alerts"] = result["alerts"]
        return extra

    async def _stream(self, job: Job, events: asyncio.Queue, extended: bool, model_id: str):
        """Server-sent events in the protocol's chunk format; scores ride in ``emovec``."""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time())}

        def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            body: dict[str, Any] = {
                "id": head["id"],
                "object": "chat.completion.chunk",
                "created": head["created"],
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if extra is not None:
                body["emovec"] = extra
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, data = await events.get()
                if kind == "token":
                    if job.watch:
                        keys = ("index", "token_id", "scores", "alerts")
                        extra = {k: data[k] for k in keys if k in data}
                        yield chunk({"content": data["text"]}, extra=extra)
                    elif data["text"]:
                        yield chunk({"content": data["text"]})
                elif kind == "error":
                    error = {"error": {"message": data, "type": "server_error"}}
                    yield f"data: {json.dumps(error)}\n\n"
                    return
                else:
                    if data["tail"]:
                        yield chunk({"content": data["tail"]})
                    extra = self._reply_extra(job, None, data) if extended else None
                    yield chunk({}, finish=data["finish_reason"], extra=extra)
                    yield "data: [DONE]\n\n"
                    return
        finally:
            job.cancel.set()  # the client went away mid-reply (after the end: no effect)


def _summary(emotions: list[str], scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and max of each emotion's score over the reply's tokens."""
    if len(scores) == 0:
        return {"mean": {}, "max": {}}
    means, peaks = scores.mean(axis=0), scores.max(axis=0)
    return {
        "mean": {e: round(float(v), 6) for e, v in zip(emotions, means, strict=True)},
        "max": {e: round(float(v), 6) for e, v in zip(emotions, peaks, strict=True)},
    }


def create_api_app(
    lm: LanguageModel,
    vectors: EmotionVectors,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ApiLimits = ApiLimits(),  # noqa: B008 - frozen
    model_id: str | None = None,
):
    """The steering endpoint for ``lm`` and ``vectors`` served at ``host:port``, behind the guard.

    The FastAPI app is ``.app`` of the returned guard; its ``state.backend`` is the
    :class:`SteeringBackend` (and ``state.backend.batcher`` the :class:`Batcher`).
    """
    backend = SteeringBackend(lm, vectors, limits)
    return create_app(lm, model_id, host, port, api_key, limits, backend=backend)


def serve(
    lm: LanguageModel,
    vectors: EmotionVectors,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ApiLimits = ApiLimits(),  # noqa: B008 - frozen
) -> None:
    """Serve until interrupted (``api_key``: required as ``Authorization: Bearer``)."""
    from emovec.openai_compat import need_extra

    uvicorn = need_extra("uvicorn")
    app = create_api_app(lm, vectors, host=host, port=port, api_key=api_key, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
