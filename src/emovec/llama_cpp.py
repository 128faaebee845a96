"""llama.cpp control vectors: emotion steering as a GGUF file, written and read.

llama.cpp (``llama-cli``, ``llama-server``: ``--control-vector-scaled FILE:SCALE``) adds
``SCALE x direction.N`` to the output of decoder block N (0-based) at every position, after the
block's residual additions. That is exactly emovec's "residual stream at layer N" (the output of
block N, ``hidden_states[N + 1]`` in transformers' terms), so the numbering carries over
unchanged: emovec layer N is ``direction.N``. emovec's steering adds ``s x norm_N x unit_N``;
a file written with strength ``s`` at scale 1, or with strength 1 at scale ``s``, makes
llama.cpp steer as ``emovec steer --positions all`` does at strength ``s``.

llama.cpp never applies ``direction.0`` (its loader refuses such a file), so layer 0 cannot be
exported. The format (also written by repeng and by llama.cpp's ``cvector-generator``):
``general.architecture = "controlvector"``, ``controlvector.model_hint``,
``controlvector.layer_count``, and one 1-D float32 tensor ``direction.N`` per layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emovec import __version__
from emovec.files import atomic_path
from emovec.vectors import EmotionVectors, VectorFileError

if TYPE_CHECKING:
    from emovec.models import LanguageModel

ARCHITECTURE = "controlvector"
#: emovec's own metadata (llama.cpp and repeng ignore it): the model and the strengths used.
META_PREFIX = "emovec."


class ControlVectorError(VectorFileError):
    """A control-vector file that cannot be written, read, or used with the given model."""


_LAYER_ZERO = (
    "llama.cpp never applies direction.0 (the output of block 0) and refuses a control "
    "vector that holds it"
)


@dataclass
class ControlVector:
    """What a control-vector file holds: per-layer directions (emovec numbering) and metadata."""

    path: Path
    directions: dict[int, torch.Tensor]
    model_hint: str | None = None
    layer_count: int | None = None
    #: emovec's extra metadata (model name, emotions and strengths), empty for other writers.
    emovec: dict[str, Any] = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def norms(self) -> dict[int, float]:
        """Euclidean norm of each layer's direction (the size of what llama.cpp adds)."""
        return {layer: float(d.norm()) for layer, d in self.directions.items()}


def export_control_vector(
    vectors: EmotionVectors,
    emotions: Mapping[str, float],
    path: str | Path,
    layers: Sequence[int] | None = None,
) -> Path:
    """Write emotion steering as a llama.cpp control vector; returns the path written.

    ``direction.N`` = sum over emotions of strength x mean residual norm at N x unit vector at
    N: what :func:`emovec.steering.steer` adds with ``positions="all"``, so that
    ``--control-vector-scaled FILE:1`` steers as emovec does. ``layers`` defaults to the
    file's steering layer, as :func:`~emovec.steering.steer` does. Written atomically.
    """
    from gguf import GGUFWriter

    from emovec.steering import steering_direction

    if not emotions:
        raise ControlVectorError("no emotions given: name at least one emotion and its strength")
    strengths = {vectors.resolve(e): float(s) for e, s in emotions.items()}
    bad = [e for e, s in strengths.items() if not math.isfinite(s)]
    if bad:
        raise ControlVectorError(f"strength of {bad[0]!r} is not a finite number: give e.g. 0.5")
    chosen = [vectors.default_steer_layer] if layers is None else sorted(set(layers))
    if not chosen:
        raise ControlVectorError("no layers given: name at least one layer (>= 1)")
    for layer in chosen:
        if layer == 0:
            raise ControlVectorError(
                f"layer 0 cannot be exported: {_LAYER_ZERO}; choose layers >= 1 "
                f"(the file's steering layer is {vectors.default_steer_layer})"
            )
        vectors.layer_index(layer)  # one clear error for a layer the vector file lacks
    model = vectors.model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), ARCHITECTURE)
        hint = str(model.get("model_type") or model.get("architecture") or model.get("name", ""))
        writer.add_string(f"{ARCHITECTURE}.model_hint", hint)
        writer.add_int32(f"{ARCHITECTURE}.layer_count", len(chosen))
        writer.add_string(f"{META_PREFIX}model", str(model.get("name", "")))
        writer.add_string(f"{META_PREFIX}fingerprint", str(model.get("fingerprint", "")))
        writer.add_string(f"{META_PREFIX}emotions", json.dumps(strengths))
        writer.add_string(f"{META_PREFIX}version", __version__)
        for layer in chosen:
            direction = steering_direction(vectors, strengths, layer)
            writer.add_tensor(f"direction.{layer}", direction.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _field_value(reader: Any, key: str) -> Any:
    """A scalar or string metadata value of a GGUF file, or None when absent or not scalar."""
    entry = reader.fields.get(key)
    if entry is None or not entry.types or len(entry.types) != 1:
        return None
    from gguf import GGUFValueType

    last = entry.parts[-1]
    if entry.types[0] == GGUFValueType.STRING:
        return bytes(last).decode("utf-8", errors="replace")
    return last.tolist()[0] if len(last) else None


def read_control_vector(path: str | Path) -> ControlVector:
    """Read a control-vector file (emovec's, repeng's or llama.cpp's); one clear error if not.

    Directions are checked as llama.cpp's loader checks them (names ``direction.N`` with
    N >= 1, 1-D, one width), so a file read here also loads in llama.cpp.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ControlVectorError(
            f"control vector not found: {path} (write one with `emovec export llama-cpp`)"
        )
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises several types for non-GGUF or damaged files
        raise ControlVectorError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); give a control "
            "vector written by `emovec export llama-cpp`, repeng or llama.cpp"
        ) from None
    arch = _field_value(reader, "general.architecture")
    names = [t.name for t in reader.tensors]
    if arch != ARCHITECTURE and (arch is not None or not names):
        raise ControlVectorError(
            f"{path} is a GGUF file but not a control vector (general.architecture is "
            f"{arch!r}, expected {ARCHITECTURE!r}; a model file cannot be applied as one); give "
            "a file written by `emovec export llama-cpp`, repeng or llama.cpp"
        )
    if not names:
        raise ControlVectorError(f"{path}: the control vector holds no direction tensors")
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise ControlVectorError(
                f"{path}: tensor {tensor.name!r} is not a control-vector direction "
                "(expected names direction.1, direction.2, ...)"
            )
        layer = int(number)
        if layer == 0:
            raise ControlVectorError(
                f"{path} holds direction.0: {_LAYER_ZERO}; export layers >= 1 instead"
            )
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise ControlVectorError(
                f"{path}: {tensor.name} has type {tensor.tensor_type.name}; llama.cpp loads only "
                "float32 (F32) directions"
            )
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if any(int(d) != 1 for d in tensor.shape[1:]):
            raise ControlVectorError(
                f"{path}: {tensor.name} has shape {list(map(int, tensor.shape))}; a direction "
                "is one vector (1-D)"
            )
        if not np.isfinite(data).all():
            raise ControlVectorError(f"{path}: {tensor.name} holds NaN or infinite values")
        directions[layer] = torch.from_numpy(data.copy())
    widths = sorted({d.shape[0] for d in directions.values()})
    if len(widths) > 1:
        raise ControlVectorError(
            f"{path}: directions have different widths {widths}; all must be one model's d_model"
        )
    meta = {
        key.removeprefix(META_PREFIX): _field_value(reader, key)
        for key in reader.fields
        if key.startswith(META_PREFIX)
    }
    if isinstance(meta.get("emotions"), str):
        try:
            meta["emotions"] = json.loads(meta["emotions"])
        except ValueError:
            meta.pop("emotions")
    count = _field_value(reader, f"{ARCHITECTURE}.layer_count")
    hint = _field_value(reader, f"{ARCHITECTURE}.model_hint")
    return ControlVector(
        path=path,
        directions=dict(sorted(directions.items())),
        model_hint=hint if isinstance(hint, str) else None,
        layer_count=count if isinstance(count, int) else None,
        emovec=meta,
    )


def import_control_vector(
    path: str | Path, lm_or_d_model: LanguageModel | int
) -> dict[int, torch.Tensor]:
    """The directions of a control-vector file (layer -> [d_model], emovec numbering).

    Refused when the width is not the model's d_model, or (given a model) when a layer lies
    beyond its last block. Apply them with :func:`emovec.steering.steer_directions` or
    :func:`apply_control_vector`.
    """
    cv = read_control_vector(path)
    check_control_vector(cv, lm_or_d_model)
    return cv.directions


def check_control_vector(cv: ControlVector, lm_or_d_model: LanguageModel | int) -> None:
    """Refuse a control vector that does not fit the model (width, layers), naming both."""
    if isinstance(lm_or_d_model, int):
        d_model, n_layers, name = lm_or_d_model, None, "the model"
    else:
        d_model, n_layers = lm_or_d_model.d_model, lm_or_d_model.n_layers
        name = f"model {lm_or_d_model.name!r}"
    hint = f" (made for {cv.model_hint!r})" if cv.model_hint else ""
    if cv.d_model != d_model:
        raise ControlVectorError(
            f"{cv.path}: directions are {cv.d_model} wide{hint} but {name} has d_model "
            f"{d_model}: use a control vector made for this model, or load the model it was "
            "made for"
        )
    beyond = [layer for layer in cv.directions if n_layers is not None and layer >= n_layers]
    if beyond:
        raise ControlVectorError(
            f"{cv.path}: direction.{beyond[0]} is beyond {name}, which has {n_layers} layers "
            f"(directions 1..{n_layers - 1}): the control vector was made for a deeper model"
        )


@contextmanager
def apply_control_vector(
    lm: LanguageModel, path: str | Path, scale: float = 1.0
) -> Iterator[ControlVector]:
    """Within the block, ``lm`` runs as llama.cpp runs with ``--control-vector-scaled FILE:SCALE``.

    Every position of every forward pass is steered, through emovec's own steering hooks.
    """
    from emovec.steering import steer_directions

    cv = read_control_vector(path)
    check_control_vector(cv, lm)
    with steer_directions(lm, cv.directions, positions="all", scale=scale):
        yield cv
