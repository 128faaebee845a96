"""The optional LLM judge: a second opinion on each reply from a chat endpoint.

A judge grades with the scenario's ``judge_prompt`` and answers ``VERDICT: YES`` or ``NO``.
It runs beside the rule grader, never instead of it. A judge that fails (down, refusing,
timing out) must not cost the rollout: the failure is stored as the verdict
(``label: judge_error``, the error without credentials) and counted by :func:`judge_health`,
so a silent judge is never mistaken for one that found nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emovec.openai_compat import ChatEndpoint, EndpointError, api_base, public_url
from emovec.studies.graders import Verdict
from emovec.studies.scenario import Scenario, StudyError, fill_template

#: The ``label`` of a verdict the judge could not give.
JUDGE_ERROR = "judge_error"


def chat_completion(
    url: str,
    model: str,
    prompt: str,
    api_key: str | None,
    timeout: float,
    max_retries: int = 2,
) -> str:
    """One greedy reply to ``prompt`` from an OpenAI-compatible endpoint (``/v1`` or not)."""
    endpoint = ChatEndpoint(url, model, api_key=api_key, timeout=timeout, max_retries=max_retries)
    return endpoint.complete(prompt, temperature=0)


@dataclass
class Judge:
    """An LLM that grades replies with the scenario's ``judge_prompt`` (VERDICT: YES/NO).

    Transport errors and 429/5xx answers are retried ``max_retries`` times (see
    :class:`emovec.openai_compat.ChatEndpoint`); what still fails becomes a ``judge_error``
    verdict.
    """

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 2

    def __call__(self, scenario: Scenario, item: dict[str, Any], reply: str) -> Verdict:
        if not scenario.judge_prompt:
            raise StudyError(f"scenario {scenario.name!r} has no judge_prompt")
        prompt = fill_template(scenario.judge_prompt, {**item, "reply": reply})
        try:
            raw = chat_completion(
                self.url, self.model, prompt, self.api_key, self.timeout, self.max_retries
            )
        except Exception as exc:  # a judge outage must not lose the rollout
            return {"flag": None, "label": JUDGE_ERROR, "prompt": prompt, "raw": self._shown(exc)}
        match = re.search(r"VERDICT:\s*(YES|NO)", raw, re.I) or re.match(
            r"\W*(YES|NO)\b", raw, re.I
        )
        flag = None if match is None else match.group(1).upper() == "YES"
        label = "unparsed" if flag is None else ("yes" if flag else "no")
        return {"flag": flag, "label": label, "prompt": prompt, "raw": raw, "model": self.model}

    def _shown(self, exc: Exception) -> str:
        """The error as stored with the rollout: never the URL's credentials or the key."""
        # an EndpointError's message names the endpoint, the cause and the fix; anything else
        # (a bug, a missing httpx) is shown with its type
        detail = str(exc) if isinstance(exc, EndpointError) else repr(exc)
        urls = {api_base(self.url), self.url}
        for url in sorted(urls, key=len, reverse=True):  # the longer first: it may hold the other
            detail = detail.replace(url, public_url(url))
        if self.api_key:
            detail = detail.replace(self.api_key, "***")
        return detail


def judge_failed(record: dict[str, Any]) -> bool:
    """Whether the judge failed on this rollout record."""
    return record.get("judge", {}).get("label") == JUDGE_ERROR


def judge_health(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How many rollouts the LLM judge failed on, and the first error (None without a judge):
    a judge that is down leaves its column empty, which must not pass for "no verdicts"."""
    judged = [r for r in records if "judge" in r]
    if not judged:
        return None
    failed = [r["judge"] for r in judged if judge_failed(r)]
    first = str(failed[0].get("raw", "")) if failed else None
    return {"rollouts": len(judged), "failed": len(failed), "first_error": first}
