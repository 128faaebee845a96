"""A small OpenAI-compatible chat endpoint backed by a local model (FastAPI + uvicorn).

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (no streaming), so that any client
of that protocol, emovec's own endpoint author included, can use a bundled or local model.
Requests are answered one at a time (one model, one lock); a request's ``seed`` makes its
sampling reproducible.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at
# definition time, and ``Request`` is imported inside ``create_app`` (fastapi is optional).
import threading
import time
import uuid
from typing import Any

from emovec.models import LanguageModel

#: Longest reply a request may ask for (protects a shared machine from runaway requests).
MAX_TOKENS_LIMIT = 2048


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def create_app(lm: LanguageModel, model_id: str | None = None):
    """A FastAPI app answering chat completions with ``lm``."""
    import torch

    from emovec.authoring import need_endpoint_extra

    need_endpoint_extra("fastapi")
    from fastapi import FastAPI, Request

    model_id = model_id or lm.name
    lock = threading.Lock()
    app = FastAPI(title="emovec chat endpoint", version="1")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "emovec"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        problem = _check_body(body, model_id)
        if problem:
            return _error(400, problem)
        from starlette.concurrency import run_in_threadpool

        def run() -> tuple[str, str, int, int]:
            with lock:
                return _complete(lm, body, torch)

        text, finish, prompt_tokens, new_tokens = await run_in_threadpool(run)
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

    return app


def _check_body(body: Any, model_id: str) -> str | None:
    """Why a chat request cannot be served, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m):
            return "each message needs a 'role' and a string 'content'"
    if body.get("model") not in (None, model_id):
        return f"model {body.get('model')!r} is not served here; this endpoint serves {model_id!r}"
    if body.get("stream"):
        return "streaming is not supported; send stream=false"
    if body.get("n", 1) != 1:
        return "only n=1 is supported"
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        return f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}"
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(key)
        if value is not None and not (isinstance(value, int | float) and lo <= value <= hi):
            return f"{key} must be a number from {lo:g} to {hi:g}"
    return None


def _complete(lm: LanguageModel, body: dict[str, Any], torch) -> tuple[str, str, int, int]:
    """Generate one reply: (text, finish reason, prompt tokens, new tokens)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
    temperature = float(body.get("temperature") or 0.0)
    top_p = float(body.get("top_p") or 1.0)
    prompt = lm.format_chat(messages)
    ids = torch.tensor([lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    if body.get("seed") is not None:
        torch.manual_seed(int(body["seed"]))
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        out = lm.model.generate(
            input_ids=ids.to(lm.device),
            attention_mask=torch.ones_like(ids).to(lm.device),
            max_new_tokens=max_tokens,
            pad_token_id=lm.tokenizer.pad_token_id,
            **sampling,
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = lm.tokenizer.eos_token_id
    finished = eos in new if eos is not None else False
    text = lm.tokenizer.decode(new, skip_special_tokens=True).strip()
    return text, "stop" if finished or len(new) < max_tokens else "length", ids.shape[1], len(new)


def serve(lm: LanguageModel, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``lm`` until interrupted."""
    from emovec.authoring import need_endpoint_extra

    uvicorn = need_endpoint_extra("uvicorn")
    uvicorn.run(create_app(lm), host=host, port=port, log_level="info")
