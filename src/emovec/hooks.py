"""Residual-stream access: the one place where emovec touches a model's forward pass.

emovec's single idea is that everything is a projection of the residual stream onto named
directions, read or written at chosen layers and positions. The "residual stream at layer L"
is the output of decoder block L (0-based), i.e. ``hidden_states[L + 1]`` in transformers'
terms. Readers, steerers, monitors and extraction all go through :func:`residual_hooks`,
which registers forward hooks (never wrappers, never edits to the model) and always removes
them, also when the forward pass raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import torch
from torch import nn

from emovec.errors import EmovecError, InputError

#: Where each architecture keeps its decoder blocks and its LM-head-free backbone.
#: model_type -> (path to the backbone, attribute of the backbone holding the blocks)
LAYER_PATHS: dict[str, tuple[str, str]] = {
    "llama": ("model", "layers"),
    "mistral": ("model", "layers"),
    "mixtral": ("model", "layers"),
    "qwen2": ("model", "layers"),
    "qwen3": ("model", "layers"),
    "qwen3_moe": ("model", "layers"),
    "gemma": ("model", "layers"),
    "gemma2": ("model", "layers"),
    "gemma3_text": ("model", "layers"),
    "gemma3": ("model.language_model", "layers"),
    "phi3": ("model", "layers"),
    "olmo2": ("model", "layers"),
    "gpt2": ("transformer", "h"),
    "gpt_neox": ("gpt_neox", "layers"),
}

#: A hook body: (layer index, residual [batch, seq, d_model], offset) -> replacement or None.
#: ``offset`` is the absolute position of ``residual[:, 0]``: the number of tokens already in
#: the KV cache (0 without a cache), so a hook knows prompt from generated positions. It is an
#: int, except for bodies marked :func:`offset_on_device`, which may get a 0-dim tensor.
ResidualFn = Callable[[int, torch.Tensor, Any], torch.Tensor | None]


class LayerOutOfRange(InputError, IndexError):
    """A layer number the model does not have."""


class UnsupportedModelError(EmovecError, TypeError):
    """A model whose decoder layers emovec does not know how to find."""


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the deepest needed layer has run."""


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _model_type(model: nn.Module) -> str:
    return getattr(model.config, "model_type", type(model).__name__)


def backbone(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (running it skips the vocabulary projection)."""
    mtype = _model_type(model)
    if mtype not in LAYER_PATHS:
        raise UnsupportedModelError(
            f"emovec does not know where {type(model).__name__} (model_type {mtype!r}) keeps "
            f"its decoder layers; supported model types: {', '.join(sorted(LAYER_PATHS))}. "
            "Add an entry to emovec.hooks.LAYER_PATHS."
        )
    return _get_path(model, LAYER_PATHS[mtype][0])


def guard_hooks_in_compiled_code() -> None:
    """Make code that ``torch.compile`` produces check the modules' hooks, so that steering
    or monitoring started after a model was compiled takes effect (the code recompiles)
    instead of being skipped in silence, which is torch's default
    (``torch._dynamo.config.skip_nnmodule_hook_guards``). Called for every model emovec
    wraps, before the user can compile it."""
    import torch._dynamo as dynamo

    if getattr(dynamo.config, "skip_nnmodule_hook_guards", False):
        dynamo.config.skip_nnmodule_hook_guards = False


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order; raises naming the class when unknown."""
    layers = getattr(backbone(model), LAYER_PATHS[_model_type(model)][1], None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(
            f"{type(model).__name__}: expected a ModuleList of decoder layers, got {type(layers)}"
        )
    return layers


def _cache_offset(
    index: int, kwargs: dict[str, Any], seq_len: int, on_device: bool = False
) -> int | torch.Tensor:
    cache = kwargs.get("cache") or kwargs.get("past_key_values") or kwargs.get("past_key_value")
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    # The block has already appended this call's keys, so the cache holds past + current.
    length = cache.get_seq_length(index)
    if on_device and isinstance(length, torch.Tensor):
        return (length - seq_len).clamp(min=0)
    return max(0, int(length) - seq_len)


def without_offset(fn: ResidualFn) -> ResidualFn:
    """Mark a hook body that ignores its ``offset``: it then gets 0 and the KV cache is never
    asked for its length. That question reads a device value on the host and changes every
    decode step, so under ``torch.compile`` it breaks the graph and recompiles each step."""
    fn.needs_offset = False  # type: ignore[attr-defined]
    return fn


def absolute_positions(hidden: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
    """Absolute positions [seq] of ``hidden``'s tokens from a hook's ``offset``, an int or a
    0-dim device tensor (:func:`offset_on_device`), built on the hidden state's device
    without reading the offset on the host."""
    if isinstance(offset, torch.Tensor):
        offset = offset.to(hidden.device)  # a no-op unless the model is split over devices
    return torch.arange(hidden.shape[1], device=hidden.device) + offset


def offset_on_device(fn: ResidualFn) -> ResidualFn:
    """Mark a hook body that uses its ``offset`` only in tensor arithmetic: a cache that keeps
    its length on the device (a static cache) then hands it over as a 0-dim tensor, unread.
    Reading it on the host (``int()``) would make a GPU wait each step and, under
    ``torch.compile``, break the graph and recompile at every decode step."""
    fn.offset_on_device = True  # type: ignore[attr-defined]
    return fn


def _make_hook(index: int, fn: ResidualFn) -> Callable[..., Any]:
    needs_offset = getattr(fn, "needs_offset", True)
    on_device = getattr(fn, "offset_on_device", False)

    def hook(_module: nn.Module, _args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        offset = _cache_offset(index, kwargs, hidden.shape[1], on_device) if needs_offset else 0
        new = fn(index, hidden, offset)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@contextmanager
def residual_hooks(
    layers: nn.ModuleList, fns: dict[int, ResidualFn], edits: bool = False
) -> Iterator[None]:
    """Run ``fns[L](L, residual, offset)`` after decoder block L on every forward pass in the block.

    Hooks that ``edits`` the residual are prepended, so that every reader (emovec's, and
    transformers' own hidden-state collection, which also uses hooks in 5.x) sees what they
    wrote; reading hooks are appended. All are removed on exit, error or not.
    """
    handles = []
    try:
        for index, fn in sorted(fns.items()):
            if not 0 <= index < len(layers):
                raise LayerOutOfRange(
                    f"layer {index} out of range: the model has {len(layers)} layers"
                )
            hook = _make_hook(index, fn)
            handles.append(
                layers[index].register_forward_hook(hook, prepend=edits, with_kwargs=True)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def stopping_after(
    layers: nn.ModuleList, index: int, when: Callable[[], bool] | None = None
) -> Iterator[None]:
    """Within the block, forward passes raise :class:`StopForward` right after block ``index``.

    Blocks nobody reads (and the LM head) then never run; the caller catches StopForward
    around each pass. The hook is appended, so hooks already on that block (captures) run
    first. ``when`` limits it to passes for which it returns True (e.g. one thread's).
    """

    def stop(_module: nn.Module, _args: Any, _output: Any) -> None:
        if when is None or when():
            raise StopForward

    handle = layers[index].register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def run_to_layer(model: nn.Module, deepest: int, **inputs: Any) -> None:
    """Run the backbone (no LM head) and stop right after decoder block ``deepest``.

    Capture hooks must already be registered; this only spares the blocks that nobody reads.
    """
    layers = decoder_layers(model)
    stopping = stopping_after(layers, deepest) if deepest < len(layers) - 1 else nullcontext()
    with stopping, suppress(StopForward):
        backbone(model)(**inputs, use_cache=False)
