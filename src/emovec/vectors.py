"""The emotion-vector file: unit directions per layer and emotion, and everything about them.

A file is safetensors (no pickle) with three tensors and one JSON metadata entry:

- ``vectors`` [layers, emotions, d_model]: unit vectors (float32);
- ``mean_activation`` [layers, d_model]: mean over emotions of the story activations, for
  readers that want centred scores;
- ``residual_norm`` [layers]: mean residual-stream norm, the steering unit;
- ``readers`` [layers, emotions, d_model] (optional): unit directions for *reading* when they
  differ from the steering vectors (``params.reader = "whitened"``: each vector multiplied by
  the inverse of the shrunk story-to-story covariance, so that directions along which stories
  of one emotion vary a lot count less);
- metadata ``emovec``: emotions, layers, default layer, model identity and weight fingerprint,
  corpus hash, every method parameter, held-out accuracy, library version.

Loading checks all of it; :meth:`EmotionVectors.check_model` refuses a model that is not the
one the vectors were built from.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emovec import __version__, catalog

if TYPE_CHECKING:
    from emovec.models import LanguageModel

FORMAT = "emovec.vectors/1"


class VectorFileError(ValueError):
    """A vector file that is missing, corrupted, inconsistent, or built for another model."""


@dataclass
class EmotionVectors:
    """Unit emotion directions at several layers of one model."""

    vectors: torch.Tensor  # [n_layers, n_emotions, d_model]
    emotions: list[str]
    layers: list[int]
    default_layer: int
    model: dict[str, Any]
    residual_norm: torch.Tensor  # [n_layers]
    mean_activation: torch.Tensor  # [n_layers, d_model]
    params: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    #: Layer that steering uses by default. Reading peaks later than steering works in small
    #: models (SmolLM2-135M: best held-out reading at layers ~18-21, cleanest happy/sad
    #: steering at 10-12), so the two defaults are kept apart; ``None`` = the default layer.
    steer_layer: int | None = None
    #: Reading directions [n_layers, n_emotions, d_model] when they differ from ``vectors``.
    readers: torch.Tensor | None = None

    def reading_directions(self, layer: int | None = None) -> torch.Tensor:
        """The unit directions ``read`` scores against at one layer: [n_emotions, d_model]."""
        row = self.layer_index(layer)
        return (self.readers if self.readers is not None else self.vectors)[row]

    @property
    def default_steer_layer(self) -> int:
        return self.default_layer if self.steer_layer is None else self.steer_layer

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    def layer_index(self, layer: int | None) -> int:
        """Row of ``layer`` in :attr:`vectors` (``None`` = default layer); clear error if absent."""
        layer = self.default_layer if layer is None else layer
        if layer not in self.layers:
            raise VectorFileError(
                f"layer {layer} is not in this vector file (it has layers "
                f"{self.layers[0]}..{self.layers[-1]}; default {self.default_layer})"
            )
        return self.layers.index(layer)

    def resolve(self, emotion: str) -> str:
        return catalog.resolve(emotion, self.emotions)

    def at(self, layer: int | None = None) -> torch.Tensor:
        """All emotion vectors at one layer: [n_emotions, d_model]."""
        return self.vectors[self.layer_index(layer)]

    def vector(self, emotion: str, layer: int | None = None) -> torch.Tensor:
        """One unit vector: [d_model]."""
        return self.at(layer)[self.emotions.index(self.resolve(emotion))]

    def norm_at(self, layer: int | None = None) -> float:
        """Mean residual norm at a layer: the unit of steering strength."""
        return float(self.residual_norm[self.layer_index(layer)])

    def info(self) -> dict[str, Any]:
        """Everything but the tensors, as plain JSON-able data."""
        return {
            "format": FORMAT,
            "emotions": self.emotions,
            "layers": self.layers,
            "default_layer": self.default_layer,
            "steer_layer": self.default_steer_layer,
            "d_model": self.d_model,
            "model": self.model,
            "residual_norm": [round(float(x), 4) for x in self.residual_norm],
            "params": self.params,
            "corpus": self.corpus,
            "metrics": self.metrics,
            "version": self.version,
        }

    def check_model(self, lm: LanguageModel) -> None:
        """Refuse to use these vectors with a model they were not built from."""
        mine, theirs = self.model, lm.identity()
        for key in ("d_model", "n_layers", "fingerprint"):
            if mine.get(key) != theirs.get(key):
                raise VectorFileError(
                    f"these vectors belong to model {mine.get('name')!r} "
                    f"({key} {mine.get(key)}), not to the loaded {theirs['name']!r} "
                    f"({key} {theirs.get(key)}); rebuild them with "
                    f"`emovec extract --model {theirs['name']}` or load the matching model"
                )

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash never leaves a half-written file under ``path``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "vectors": self.vectors.float().contiguous(),
            "residual_norm": self.residual_norm.float().contiguous(),
            "mean_activation": self.mean_activation.float().contiguous(),
        }
        if self.readers is not None:
            tensors["readers"] = self.readers.float().contiguous()
        meta = self.info()
        meta.pop("residual_norm")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"emovec": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read and validate a vector file; every problem is one clear :class:`VectorFileError`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise VectorFileError(
                f"vector file not found: {path} (build one with `emovec extract --out {path}`)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get("emovec")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises several types for damaged files
            raise VectorFileError(
                f"{path} is not a readable safetensors file ({type(exc).__name__}); "
                "it may be truncated or corrupted: rebuild it with `emovec extract`"
            ) from exc
        if raw_meta is None:
            raise VectorFileError(f"{path} is a safetensors file but not an emovec vector file")
        try:
            meta = json.loads(raw_meta)
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path}: emovec metadata is not valid JSON") from exc
        if meta.get("format") != FORMAT:
            raise VectorFileError(f"{path}: unsupported format {meta.get('format')!r}")
        missing = {"vectors", "residual_norm", "mean_activation"} - set(tensors)
        if missing:
            raise VectorFileError(f"{path}: missing tensors {sorted(missing)}")
        vec = tensors["vectors"]
        expected = (len(meta["layers"]), len(meta["emotions"]), meta["d_model"])
        if tuple(vec.shape) != expected:
            raise VectorFileError(
                f"{path}: vectors have shape {tuple(vec.shape)} but metadata says {expected}"
            )
        if not torch.isfinite(vec).all():
            raise VectorFileError(f"{path}: vectors contain NaN or infinite values")
        readers = tensors.get("readers")
        if readers is not None and (
            tuple(readers.shape) != expected or not torch.isfinite(readers).all()
        ):
            raise VectorFileError(
                f"{path}: readers do not match the vectors' shape or are not finite"
            )
        for key in ("default_layer", "steer_layer"):
            if meta.get(key, meta["default_layer"]) not in meta["layers"]:
                raise VectorFileError(f"{path}: {key} is not among the stored layers")
        return cls(
            vectors=vec,
            emotions=list(meta["emotions"]),
            layers=[int(x) for x in meta["layers"]],
            default_layer=int(meta["default_layer"]),
            model=meta["model"],
            residual_norm=tensors["residual_norm"],
            mean_activation=tensors["mean_activation"],
            params=meta.get("params", {}),
            corpus=meta.get("corpus", {}),
            metrics=meta.get("metrics", {}),
            version=meta.get("version", "?"),
            steer_layer=meta.get("steer_layer"),
            readers=readers,
        )
