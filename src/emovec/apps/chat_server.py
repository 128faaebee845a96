"""A small OpenAI-compatible chat endpoint backed by a local model (FastAPI + uvicorn).

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (no streaming), so that any client
of that protocol, emovec's own endpoint author included, can use a bundled or local model.
Requests are answered one at a time (one model, one lock) from a bounded queue: past it a
request gets 429 with ``Retry-After``. A request's ``seed`` makes its sampling reproducible.
How an admitted request is answered is a :class:`Backend`; :mod:`emovec.apps.api_server` plugs in
one that batches requests and steers and scores them, and keeps everything else here.

Safe by default: loopback, the cross-site guard of :mod:`emovec.apps.web_guard` (Host and Origin
checked; an optional API key), request bodies validated by pydantic models with bounds, a cap
on prompt tokens, chat-template control tokens refused in message text (they would forge
role markers), and a reply whose client went away is cancelled instead of generated in full.
"""

# No ``from __future__ import annotations``: FastAPI and pydantic read the annotations at
# definition time, and the models are built inside ``create_app`` (fastapi is optional).
import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from emovec.models import LanguageModel

#: Longest reply a request may ask for (protects a shared machine from runaway requests).
MAX_TOKENS_LIMIT = 2048


@dataclass(frozen=True)
class ChatLimits:
    """Bounds on what requests may ask of the endpoint."""

    body_bytes: int = 262_144
    messages: int = 64
    prompt_tokens: int = 2048
    max_tokens: int = MAX_TOKENS_LIMIT
    queue: int = 4  # requests running or waiting; more get 429
    retry_after_s: int = 5


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", headers=None
) -> Any:
    """A JSON error answer in the protocol's shape (``{"error": {"message", "type"}}``)."""
    from fastapi.responses import JSONResponse

    content = {"error": {"message": message, "type": kind}}
    return JSONResponse(status_code=status, content=content, headers=headers)


def _request_models(limits: ChatLimits):
    """The pydantic models of a chat request, with the endpoint's bounds."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore", strict=True)
        role: Literal["system", "user", "assistant"]
        content: str = Field(max_length=limits.body_bytes)

    class ChatRequest(BaseModel):
        # Unknown fields are ignored, as OpenAI-style servers do; known ones are strict.
        model_config = ConfigDict(extra="ignore", strict=True)
        messages: list[Message] = Field(min_length=1, max_length=limits.messages)
        model: str | None = Field(None, max_length=256)
        stream: bool = False
        n: int = Field(1, ge=1, le=1)
        max_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        max_completion_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
        top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
        seed: int | None = Field(None, ge=0, lt=2**63)

    return ChatRequest


def control_tokens(lm: LanguageModel) -> list[str]:
    """The tokenizer's special token strings (``<|im_end|>``...): never allowed in user text."""
    return sorted({t for t in lm.tokenizer.all_special_tokens if t and len(t) > 1}, key=len)


def requested_tokens(body) -> int:
    """The longest reply a validated request asks for (256 when it names no limit)."""
    return body.max_tokens or body.max_completion_tokens or 256


def request_sampling(body) -> dict[str, float]:
    """A request's sampling as :func:`emovec.generation.generate_ids` takes it: temperature
    (0: greedy) and, when sampling, ``top_p`` (1 unless the request names one, as the
    protocol's default)."""
    temperature = float(body.temperature or 0.0)
    if temperature <= 0:
        return {"temperature": 0.0}
    return {"temperature": temperature, "top_p": float(body.top_p or 1.0)}


def completion_body(
    model_id: str, text: str, finish: str, prompt_tokens: int, new_tokens: int
) -> dict[str, Any]:
    """A ``chat.completion`` object in the protocol's shape."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": new_tokens,
            "total_tokens": prompt_tokens + new_tokens,
        },
    }


class Backend:
    """How the endpoint answers an admitted request: here one at a time, under one lock.

    Everything before (body size, validation, control tokens, prompt length, the queue) is
    the endpoint's; a subclass changes only the answer, so servers built on it (batching,
    steering) keep the same bounds and defences.
    """

    #: whether ``stream: true`` requests are served (else they get a 400)
    streaming = False

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.lock = threading.Lock()

    def request_model(self, base: type) -> type:
        """The pydantic model of a request; ``base`` is the plain chat request."""
        return base

    def describe(self, errors: list[dict[str, Any]]) -> str:
        """One line for a request that failed validation (pydantic's errors)."""
        return first_problem(errors)

    def check(self, body) -> str | None:
        """Why a validated request cannot be served (beyond the endpoint's checks), or None."""
        return None

    def add_routes(self, app) -> None:
        """Routes next to ``/v1/models`` and ``/v1/chat/completions`` (none here)."""

    async def respond(self, request, body, prompt_ids: list[int], model_id: str, release):
        """The answer to one admitted request; ``release()`` frees its queue slot (call it
        once the work is over; calling it again does nothing)."""
        cancel = threading.Event()

        def run() -> tuple[str, str, int]:
            with self.lock:
                if cancel.is_set():
                    return "", "cancelled", 0
                return _complete(self.lm, body, prompt_ids, cancel)

        try:
            work = asyncio.ensure_future(asyncio.to_thread(run))
            while not work.done():
                await asyncio.wait({work}, timeout=0.25)
                if not work.done() and await request.is_disconnected():
                    cancel.set()  # the client went away: stop at the next token
            text, finish, new_tokens = await work
        finally:
            release()
        return completion_body(model_id, text, finish, len(prompt_ids), new_tokens)


def create_app(
    lm: LanguageModel,
    model_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ChatLimits = ChatLimits(),  # noqa: B008 - frozen
    backend: Backend | None = None,
):
    """The chat endpoint's application for ``lm`` served at ``host:port``, behind the guard.

    ``backend`` answers admitted requests (default: one at a time, :class:`Backend`).
    """
    from emovec.apps.web_guard import Guard, allowed_hosts
    from emovec.openai_compat import need_extra

    need_extra("fastapi")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    model_id = model_id or lm.name
    backend = backend or Backend(lm)
    chat_request = backend.request_model(_request_models(limits))
    forbidden = control_tokens(lm)
    queue = {"pending": 0}
    app = FastAPI(title="emovec chat endpoint", version="1", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):  # a 400 in the protocol's error shape, never a 500
        return error_response(400, first_problem(exc.errors()))

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "emovec"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error_response(415, "send the body as JSON (Content-Type: application/json)")
        raw = await _read_bounded(request, limits.body_bytes)
        if raw is None:
            return error_response(413, f"the body is larger than {limits.body_bytes} bytes")
        try:
            body = chat_request.model_validate_json(raw)
        except ValidationError as exc:
            return error_response(400, backend.describe(exc.errors()))
        problem = _check_body(body, model_id, forbidden, backend.streaming) or backend.check(body)
        if problem:
            return error_response(400, problem)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        prompt_ids = lm.tokenizer(lm.format_chat(messages), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) > limits.prompt_tokens:
            return error_response(
                400, f"the prompt has {len(prompt_ids)} tokens; at most {limits.prompt_tokens}"
            )
        if queue["pending"] >= limits.queue:
            return error_response(
                429,
                f"busy: {queue['pending']} requests are running or waiting; retry later",
                kind="rate_limit_error",
                headers={"Retry-After": str(limits.retry_after_s)},
            )
        queue["pending"] += 1
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                queue["pending"] -= 1

        try:
            return await backend.respond(request, body, prompt_ids, model_id, release)
        except BaseException:
            release()
            raise

    backend.add_routes(app)
    return Guard(app, allowed_hosts(host, port), api_key, protected=("/v1",))


async def _read_bounded(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def first_problem(errors) -> str:
    """One line naming the first invalid field of a request, from pydantic's error list."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def _check_body(body, model_id: str, forbidden: list[str], streaming: bool = False) -> str | None:
    """Why a validated chat request cannot be served, or None."""
    if body.model not in (None, model_id):
        return f"model {body.model!r} is not served here; this endpoint serves {model_id!r}"
    if body.stream and not streaming:
        return "streaming is not supported; send stream=false"
    for i, message in enumerate(body.messages):
        for token in forbidden:
            if token in message.content:
                return (
                    f"messages.{i}.content contains the chat template's control token "
                    f"{token!r}; remove it (it would forge a role marker)"
                )
    return None


def _complete(
    lm: LanguageModel, body, prompt_ids: list[int], cancel: threading.Event
) -> tuple[str, str, int]:
    """Generate one reply: (text, finish reason, new tokens); stops early once ``cancel`` is set."""
    import torch
    from transformers import StoppingCriteria

    from emovec.generation import decode_reply, generate_ids

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

    max_tokens = requested_tokens(body)
    ids = torch.tensor([prompt_ids])
    out = generate_ids(
        lm,
        ids,
        max_new_tokens=max_tokens,
        seed=body.seed,
        stopping=[Cancelled()],
        **request_sampling(body),
    )
    new = out[0, ids.shape[1] :].tolist()
    if cancel.is_set():
        return "", "cancelled", len(new)
    eos = lm.tokenizer.eos_token_id
    finished = eos in new if eos is not None else False
    text = decode_reply(lm, new)
    return text, "stop" if finished or len(new) < max_tokens else "length", len(new)


def serve(
    lm: LanguageModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None
) -> None:
    """Serve ``lm`` until interrupted (``api_key``: required as ``Authorization: Bearer``)."""
    from emovec.openai_compat import need_extra

    uvicorn = need_extra("uvicorn")
    app = create_app(lm, host=host, port=port, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="info")
