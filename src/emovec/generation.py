"""Generation as every feature needs it: chat prompts, left padding, sampling, one ``generate``.

Steering, the live monitor, case studies, the API server and the chat endpoint all generate
through :func:`generate_ids` (the only caller of ``model.generate``), so sampling settings,
padding and seeding mean the same everywhere. Hooks (steering, scoring) are installed by the
caller around the call; this module never touches the residual stream itself.
KV-cache access (:func:`cache_of`, :func:`cache_argument`) is here too, because transformers
names the cache differently across versions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from emovec.errors import InputError

if TYPE_CHECKING:
    from transformers import StoppingCriteria

    from emovec.models import LanguageModel

#: Nucleus mass used whenever emovec samples (temperature > 0).
TOP_P = 0.95


def sampling_settings(temperature: float, top_p: float = TOP_P) -> dict[str, Any]:
    """``generate`` arguments for ``temperature`` (0 = greedy; otherwise nucleus sampling)."""
    if temperature < 0:
        raise InputError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if temperature > 0:
        return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
    return {"do_sample": False}


def chat_prompt(lm: LanguageModel, text: str, chat: bool = True) -> str:
    """``text`` as one user turn in the model's chat format, ending where the reply starts
    (or ``text`` itself with ``chat=False``)."""
    return lm.format_chat([{"role": "user", "content": text}]) if chat else text


def left_padded(lm: LanguageModel, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of ``texts``, padded on the left so every row's next token
    is at the same position (what batched generation needs)."""
    tok = lm.tokenizer
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=True)
    finally:
        tok.padding_side = old_side
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def generate_ids(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = TOP_P,
    seed: int | None = None,
    stopping: Sequence[StoppingCriteria] = (),
    **generate_kwargs: Any,
) -> Any:
    """Run ``model.generate`` without gradients; returns what it returns (ids, or a dict
    output with ``return_dict_in_generate=True``).

    ``seed`` seeds torch's generator just before sampling (``top_p`` applies when
    ``temperature`` > 0); ``stopping`` are transformers ``StoppingCriteria``. Inputs are
    moved to the model's device.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if seed is not None:
        torch.manual_seed(seed)
    if stopping:
        from transformers import StoppingCriteriaList

        generate_kwargs["stopping_criteria"] = StoppingCriteriaList(list(stopping))
    model: Any = lm.model  # generate() comes from transformers' GenerationMixin
    with torch.no_grad():
        return model.generate(
            input_ids=input_ids.to(lm.device),
            attention_mask=attention_mask.to(lm.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=lm.tokenizer.pad_token_id,
            **sampling_settings(temperature, top_p),
            **generate_kwargs,
        )


def decode_reply(lm: LanguageModel, ids: Sequence[int] | torch.Tensor) -> str:
    """The text of generated token ids, special tokens dropped and ends stripped."""
    listed = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return str(lm.tokenizer.decode(listed, skip_special_tokens=True)).strip()


def generate(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    max_new_tokens: int = 40,
    chat: bool = True,
    temperature: float = 0.0,
    seed: int | None = None,
    **generate_kwargs: Any,
) -> str | list[str]:
    """Replies to one prompt or a batch (left-padded), returning only the new text.

    With ``chat=True`` each prompt is a user message in the model's chat format. Steering
    applies when called inside :func:`emovec.steer`.
    """
    single = isinstance(prompts, str)
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if any(not p.strip() for p in batch):
        raise InputError("empty prompt: give some text to continue")
    enc = left_padded(lm, [chat_prompt(lm, p, chat) for p in batch])
    out = generate_ids(
        lm,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        **generate_kwargs,
    )
    width = enc["input_ids"].shape[1]
    replies = [decode_reply(lm, row[width:]) for row in out]
    return replies[0] if single else replies


def cache_of(output: Any) -> Any:
    """The KV cache of a model or ``generate`` output (``cache`` or ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def cache_argument(module: torch.nn.Module) -> str:
    """The keyword under which ``module.forward`` takes a KV cache in this transformers."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
