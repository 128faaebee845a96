"""Steering: add emotion directions to the residual stream while the model runs.

At each steered layer L the hook adds ``sum_e s_e * norm_L * v_e,L`` to the chosen positions,
where ``norm_L`` is the mean residual norm at L measured during extraction (so ``s`` is a
fraction of a typical residual, signed) and ``v`` are unit vectors. Positions:

- ``"all"``: every position of every forward pass;
- ``"prompt"``: positions before ``prompt_length`` (or, without one, every position of a
  multi-token forward pass such as generation's prefill);
- ``"generated"``: positions from ``prompt_length`` on (or single-token decode steps);
- a boolean tensor [batch, positions]: exactly the marked absolute positions.

Positions are absolute (the KV-cache offset is taken into account), so steering is the same
with or without the cache, batched or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from emovec.errors import InputError
from emovec.generation import generate  # noqa: F401 - emovec.steering.generate, as before
from emovec.hooks import absolute_positions, offset_on_device, residual_hooks, without_offset
from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors

POSITIONS = ("all", "prompt", "generated")


def steering_direction(
    vectors: EmotionVectors, strengths: Mapping[str, float], layer: int
) -> torch.Tensor:
    """The vector added at ``layer``: sum of strength x residual norm x unit vector."""
    total = torch.zeros(vectors.d_model)
    for emotion, strength in strengths.items():
        total += float(strength) * vectors.norm_at(layer) * vectors.vector(emotion, layer)
    return total


def _position_mask(
    positions: str | torch.Tensor,
    offset: int | torch.Tensor,
    hidden: torch.Tensor,
    prompt_length: int | None,
) -> torch.Tensor | None:
    """[batch, seq, 1] float mask of the positions to steer in this call, or None for all.

    ``offset`` may be a 0-dim device tensor (a static cache's length): the mask is then built
    on the device, without reading it on the host."""
    seq = hidden.shape[1]
    if isinstance(positions, str) and positions == "all":
        return None
    absolute = absolute_positions(hidden, offset)
    if isinstance(positions, torch.Tensor):
        width = positions.shape[1]  # positions beyond the mask are not steered
        index = absolute.clamp(max=width - 1).to(positions.device)
        cols = positions[:, index].to(hidden.device) & (absolute < width)
        return cols.to(hidden.dtype).unsqueeze(-1)
    if prompt_length is not None:
        is_prompt = absolute < prompt_length
    else:
        is_prompt = torch.full_like(absolute, seq > 1, dtype=torch.bool)
    chosen = is_prompt if positions == "prompt" else ~is_prompt
    return chosen.to(hidden.dtype).view(1, seq, 1)


@contextmanager
def steer(
    lm: LanguageModel,
    vectors: EmotionVectors,
    strengths: Mapping[str, float],
    layers: Sequence[int] | None = None,
    positions: str | torch.Tensor = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """Within the block, every forward pass of ``lm`` is steered; hooks go away on exit.

    ``strengths`` maps emotion -> signed strength (0.5 = half a typical residual norm).
    ``layers`` defaults to the vector file's steering layer (``vectors.default_steer_layer``).
    """
    vectors.check_model(lm)
    if isinstance(positions, str) and positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)} or a boolean mask")
    layers = [vectors.default_steer_layer] if layers is None else list(layers)
    for layer in layers:
        vectors.layer_index(layer)  # clear error for a layer the file lacks
    strengths = {vectors.resolve(e): float(s) for e, s in strengths.items()}
    deltas = {layer: steering_direction(vectors, strengths, layer) for layer in layers}
    with steer_directions(lm, deltas, positions=positions, prompt_length=prompt_length):
        yield


@contextmanager
def steer_directions(
    lm: LanguageModel,
    directions: Mapping[int, torch.Tensor],
    positions: str | torch.Tensor = "all",
    prompt_length: int | None = None,
    scale: float = 1.0,
) -> Iterator[None]:
    """Within the block, add raw vectors (layer -> [d_model]) to the residual stream.

    The addition :func:`steer` makes, for vectors that carry their own scale (a llama.cpp
    control vector, a hand-made direction); ``scale`` multiplies them all, as llama.cpp's
    ``--control-vector-scaled FILE:SCALE`` does. Layers are emovec's (output of block L).
    """
    if isinstance(positions, str) and positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)} or a boolean mask")
    deltas = {}
    for layer, direction in directions.items():
        if tuple(direction.shape) != (lm.d_model,):
            raise InputError(
                f"the vector for layer {layer} has shape {tuple(direction.shape)}, but the "
                f"model's residual stream is {lm.d_model} wide: use vectors made for this model"
            )
        deltas[layer] = (float(scale) * direction.float()).to(lm.device, lm.model.dtype)

    if isinstance(positions, torch.Tensor):
        positions = positions.to(lm.device, torch.bool)  # once, not at every step

    @offset_on_device
    def add(layer: int, hidden: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
        mask = _position_mask(positions, offset, hidden, prompt_length)
        # to the hidden state's device and dtype: a no-op on one device; with a device map
        # (accelerate) the layer may sit on another GPU than the embeddings
        delta = deltas[layer].to(hidden.device, hidden.dtype)
        return hidden + delta if mask is None else hidden + mask * delta

    # Only absolute positions need the cache's length: a named choice without prompt_length
    # is decided by the pass's shape alone.
    offset_free = isinstance(positions, str) and (positions == "all" or prompt_length is None)
    hook = without_offset(add) if offset_free else add
    with residual_hooks(lm.layers, dict.fromkeys(deltas, hook), edits=True):
        yield


@contextmanager
def steer_rows(
    lm: LanguageModel,
    vectors: EmotionVectors,
    strengths: Sequence[Mapping[str, float] | None],
    layers: Sequence[Sequence[int] | None] | None = None,
    positions: str | Sequence[str] = "all",
    attention_mask: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, steer each row of a batch with its own strengths (None: unsteered).

    One batched forward pass then serves requests that each want their own steering (the API
    server batches them this way): row ``r`` gets exactly what :func:`steer` with
    ``strengths[r]``, ``layers[r]`` (None: the file's steering layer) and ``positions[r]``
    (one name for all rows, or one per row) gives it when run alone, and an unsteered row gets
    nothing added. ``attention_mask`` [batch, prompt width] marks left-padded prompts: padding
    is never steered, and each row's prompt is its own tokens, so ``"prompt"``/``"generated"``
    split every row where its prompt ends. Without it, rows are unpadded and ``"prompt"``
    means the positions of a multi-token pass, as in :func:`steer` without ``prompt_length``.
    """
    vectors.check_model(lm)
    n = len(strengths)
    row_positions = [positions] * n if isinstance(positions, str) else list(positions)
    row_layers = [None] * n if layers is None else list(layers)
    if len(row_positions) != n or len(row_layers) != n:
        raise InputError(
            f"steer_rows: {n} rows of strengths but {len(row_positions)} of positions and "
            f"{len(row_layers)} of layers; give one per row"
        )
    for where in row_positions:
        if where not in POSITIONS:
            raise InputError(f"positions must be one of {', '.join(POSITIONS)}, not {where!r}")
    if attention_mask is not None and attention_mask.shape[0] != n:
        raise InputError(f"attention_mask has {attention_mask.shape[0]} rows; strengths has {n}")
    per_layer: dict[int, torch.Tensor] = {}
    for row, (wanted, chosen) in enumerate(zip(strengths, row_layers, strict=True)):
        if not wanted:
            continue
        resolved = {vectors.resolve(e): float(s) for e, s in wanted.items()}
        for layer in dict.fromkeys([vectors.default_steer_layer] if chosen is None else chosen):
            vectors.layer_index(layer)  # clear error for a layer the file lacks
            if layer not in per_layer:
                per_layer[layer] = torch.zeros(n, vectors.d_model)
            per_layer[layer][row] = steering_direction(vectors, resolved, layer)
    if not per_layer:  # nothing to add: no hooks at all
        yield
        return
    deltas = {k: v.to(lm.device, lm.model.dtype).unsqueeze(1) for k, v in per_layer.items()}
    mode = torch.tensor([POSITIONS.index(p) for p in row_positions], device=lm.device)
    if attention_mask is not None:
        width = int(attention_mask.shape[1])
        pads = (attention_mask.to(lm.device).long().cumsum(1) == 0).sum(1)  # left padding
    else:
        width, pads = None, torch.zeros(n, dtype=torch.long, device=lm.device)

    @offset_on_device
    def add(layer: int, hidden: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
        seq = hidden.shape[1]
        cols = absolute_positions(hidden, offset)
        real = cols.unsqueeze(0) >= pads.unsqueeze(1)  # [batch, seq]: not padding
        if width is not None:
            is_prompt = (cols < width).unsqueeze(0)
        else:
            is_prompt = torch.full((1, seq), seq > 1, dtype=torch.bool, device=hidden.device)
        chosen = torch.where(
            (mode == 0).unsqueeze(1),
            real,
            real & torch.where((mode == 1).unsqueeze(1), is_prompt, ~is_prompt),
        )
        delta = deltas[layer].to(hidden.device, hidden.dtype)  # no-op unless device-mapped
        return hidden + chosen.unsqueeze(-1).to(hidden.dtype) * delta

    with residual_hooks(lm.layers, dict.fromkeys(deltas, add), edits=True):
        yield
