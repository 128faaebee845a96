"""The one client for OpenAI-compatible chat endpoints (vLLM, llama.cpp, hosted APIs,
``emovec corpus serve``), used by corpus authoring, study judges and the CLI.

Every call has a timeout; :meth:`ChatEndpoint.complete` and :meth:`ChatEndpoint.acomplete`
retry transport errors and 429/5xx answers with exponential backoff (honouring
``Retry-After``), and refuse other answers at once. URLs in messages never carry credentials
(:func:`public_url`).
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from emovec.errors import EmovecError, MissingDependencyError

#: HTTP answers worth another try (rate limits and server trouble).
RETRIED = (429, 500, 502, 503, 504)


class EndpointError(EmovecError, RuntimeError):
    """An endpoint that refused a request, or did not answer within the retries."""


def need_extra(module: str) -> ModuleType:
    """Import an optional dependency of endpoints and servers, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for chat endpoints: pip install 'emovec[endpoint]'"
        ) from exc


def api_base(url: str) -> str:
    """The ``.../v1`` base of an endpoint URL (given with or without ``/v1``)."""
    base = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        base = base.removesuffix(suffix)
    return base if base.endswith("/v1") else base + "/v1"


def public_url(url: str) -> str:
    """``url`` without what may be a secret: user and password (``https://user:key@host``),
    query string and fragment. Manifests and messages name endpoints this way."""
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


def completion_text(payload: Any) -> str | None:
    """The reply text of a chat-completion JSON body, or None when it is not one."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def retry_after(headers: Any) -> float | None:
    """Seconds a ``Retry-After`` header asks for (None when absent or not a number)."""
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class ChatEndpoint:
    """One model behind an OpenAI-compatible ``/v1/chat/completions``."""

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 1.0

    def __post_init__(self) -> None:
        self.base = api_base(self.url)
        #: The URL as shown in messages and stored in manifests: without credentials.
        self.public = public_url(self.base)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, messages: Sequence[dict[str, str]] | str, **params: Any) -> dict[str, Any]:
        """A request body; a string is one user message. ``params`` (max_tokens, temperature,
        top_p, seed...) are passed through, None values left out."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        extra = {k: v for k, v in params.items() if v is not None}
        return {"model": self.model, "messages": list(messages), **extra}

    def _verdict(self, response: Any) -> tuple[str | None, str, float]:
        """(text, problem, wait floor) of one answer; raises when retrying cannot help."""
        if response.status_code == 200:
            try:
                text = completion_text(response.json())
            except ValueError:
                text = None
            if text is not None:
                return text, "", 0.0
            return None, f"a reply that is not a chat completion: {response.text[:120]!r}", 0.0
        if response.status_code in RETRIED:
            problem = f"HTTP {response.status_code}: {response.text[:120]}"
            return None, problem, retry_after(response.headers) or 0.0
        raise EndpointError(
            f"endpoint {self.public} refused the request: HTTP {response.status_code}: "
            f"{response.text[:200]} (check the URL, model and API key)"
        )

    def _unreachable(self, httpx: ModuleType, exc: Exception, detail: bool) -> str:
        """Why a request got no answer (a timeout is a transport error too); ``detail`` adds
        the error's own text (the async client's messages carry it; the blocking one's, read
        in study summaries, name the error class only)."""
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer within {self.timeout:g} s"
        shown = f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__
        return f"cannot reach {self.public} ({shown})"

    def _wait(self, attempt: int, floor: float) -> float:
        return min(max(self.backoff * 2**attempt * (0.5 + random.random() / 2), floor), 120.0)

    def _gave_up(self, problem: str) -> EndpointError:
        return EndpointError(
            f"endpoint {self.public} gave up after {self.max_retries + 1} tries: {problem}"
        )

    def complete(self, messages: Sequence[dict[str, str]] | str, **params: Any) -> str:
        """One chat completion's text (blocking), retried as the module says."""
        httpx = need_extra("httpx")
        body, problem = self.body(messages, **params), ""
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.max_retries + 1):
                try:
                    response = client.post(f"{self.base}/chat/completions", json=body)
                except httpx.TransportError as exc:
                    text, problem, floor = None, self._unreachable(httpx, exc, detail=False), 0.0
                else:
                    text, problem, floor = self._verdict(response)
                if text is not None:
                    return text
                if attempt < self.max_retries:
                    time.sleep(self._wait(attempt, floor))
        raise self._gave_up(problem)

    def async_client(self, concurrency: int = 4) -> Any:
        """An ``httpx.AsyncClient`` for :meth:`acomplete` with at most ``concurrency``
        connections."""
        httpx = need_extra("httpx")
        limits = httpx.Limits(max_connections=concurrency)
        return httpx.AsyncClient(timeout=self.timeout, headers=self.headers, limits=limits)

    async def acomplete(
        self, client: Any, messages: Sequence[dict[str, str]] | str, **params: Any
    ) -> str:
        """:meth:`complete` on an :meth:`async_client`, for many requests at once."""
        httpx = need_extra("httpx")
        body, problem = self.body(messages, **params), ""
        for attempt in range(self.max_retries + 1):
            try:
                response = await client.post(f"{self.base}/chat/completions", json=body)
            except httpx.TransportError as exc:
                text, problem, floor = None, self._unreachable(httpx, exc, detail=True), 0.0
            else:
                text, problem, floor = self._verdict(response)
            if text is not None:
                return text
            if attempt < self.max_retries:
                await asyncio.sleep(self._wait(attempt, floor))
        raise self._gave_up(problem)


def list_models(url: str, api_key: str | None = None, timeout: float = 30.0) -> list[str]:
    """The model ids an endpoint serves (``GET /v1/models``)."""
    httpx = need_extra("httpx")
    base = api_base(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        data = httpx.get(f"{base}/models", timeout=timeout, headers=headers).json()["data"]
        return [str(m["id"]) for m in data]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EndpointError(
            f"cannot list the models of {public_url(base)} ({type(exc).__name__}); is the "
            "server running? Or name the model explicitly"
        ) from exc
