"""Who writes the corpus: a local model in fixed batches, or an OpenAI-compatible endpoint.

Both record an ``identity`` in the manifest (a run continues only with the same author) and
take the same :class:`Sampling`. A local author generates through :mod:`emovec.generation`;
an endpoint author calls :class:`emovec.openai_compat.ChatEndpoint`, which does the retries,
backoff and ``Retry-After``; this module only adds the corpus's advice to its errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emovec.authoring.design import AuthoringError
from emovec.openai_compat import ChatEndpoint, EndpointError

if TYPE_CHECKING:
    from emovec.models import LanguageModel

#: Added to every endpoint failure: replies already received are in the reply log.
RESUME_ADVICE = "finished requests are saved, rerun the same command to continue"


@dataclass
class Sampling:
    """Sampling settings shared by every author (recorded: they change the text)."""

    max_new_tokens: int = 220
    temperature: float = 0.8
    #: Local authors sample with :data:`emovec.generation.TOP_P` (0.95) only.
    top_p: float = 0.95


class LocalAuthor:
    """A local model (the studied one, or any other ``load_model`` spec) writing in batches."""

    batched = True

    def __init__(self, lm: LanguageModel, batch_size: int = 8):
        if batch_size < 1:
            raise AuthoringError(f"batch size must be at least 1, got {batch_size}")
        self.lm, self.batch_size = lm, batch_size

    def identity(self) -> dict[str, Any]:
        """Who wrote the corpus, as the manifest records it (a run continues only with it)."""
        return {"type": "local", "name": self.lm.name, "fingerprint": self.lm.fingerprint}

    def write_batch(self, prompts_: list[str], sampling: Sampling, seed: int) -> list[str]:
        """Replies to one batch of prompts, sampled with ``seed`` (same batch, same tokens)."""
        from emovec.generation import TOP_P, generate  # torch: imported when a model writes

        if sampling.temperature > 0 and sampling.top_p != TOP_P:
            raise AuthoringError(f"local authors sample with top_p {TOP_P}")
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
        self.endpoint = ChatEndpoint(base_url, model, api_key, timeout, max_retries, backoff)
        self.model, self.concurrency = model, concurrency

    @property
    def base_url(self) -> str:
        """The endpoint's ``.../v1`` base."""
        return self.endpoint.base

    @property
    def public_url(self) -> str:
        """The URL as stored in the manifest and shown in messages: without credentials."""
        return self.endpoint.public

    def identity(self) -> dict[str, Any]:
        """The endpoint (URL without credentials) and model, as the manifest records them."""
        return {"type": "endpoint", "url": self.public_url, "model": self.model}

    def client(self) -> Any:
        """The ``httpx.AsyncClient`` a run shares between its concurrent requests."""
        return self.endpoint.async_client(self.concurrency)

    async def complete(self, client: Any, prompt: str, sampling: Sampling, seed: int) -> str:
        """One chat completion's text; raises AuthoringError once the endpoint refuses or the
        retries are spent."""
        try:
            return await self.endpoint.acomplete(
                client,
                prompt,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=seed,
            )
        except EndpointError as exc:
            raise AuthoringError(f"{exc}; {RESUME_ADVICE}") from exc
