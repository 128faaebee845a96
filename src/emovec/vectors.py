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
- ``geometry_scores`` [layers, emotions, k] (optional, ``params.geometry = "split-half"``):
  each emotion's scores on the principal axes of the cross-covariance between two halves of
  the stories, which the geometry experiment uses instead of an ordinary PCA;
- metadata ``emovec``: emotions, layers, default layer, model identity and weight fingerprint,
  corpus hash, every method parameter, held-out accuracy, library version.

Loading checks all of it; :meth:`EmotionVectors.check_model` refuses a model that is not the
one the vectors were built from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emovec import __version__, catalog
from emovec.errors import EmovecError
from emovec.files import atomic_path

if TYPE_CHECKING:
    from emovec.models import LanguageModel

FORMAT = "emovec.vectors/1"


class VectorFileError(EmovecError, ValueError):
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
    #: Split-half cross-covariance scores [n_layers, n_emotions, k], when built with them.
    geometry_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Split-half axes belong to one set of emotions and layers: a copy with fewer
        # emotions must drop them (see subset), never carry them misaligned.
        if self.geometry_scores is not None and tuple(self.geometry_scores.shape[:2]) != (
            len(self.layers),
            len(self.emotions),
        ):
            raise VectorFileError(
                f"geometry_scores have shape {tuple(self.geometry_scores.shape)} but the vectors "
                f"have {len(self.layers)} layers and {len(self.emotions)} emotions; use "
                "subset() to keep fewer emotions"
            )

    def __repr__(self) -> str:
        """One line (no tensors): model, emotions, layers, default layers, corpus."""
        n = len(self.emotions)
        shown = ", ".join(self.emotions[:4]) + (", ..." if n > 4 else "")
        layers = self.layers
        if not layers:
            span = "no layers"
        elif layers == list(range(layers[0], layers[-1] + 1)):
            span = f"layers {layers[0]}..{layers[-1]}"
        else:
            span = f"{len(layers)} layers in {layers[0]}..{layers[-1]}"
        steer = (
            f", steer layer {self.steer_layer}"
            if self.steer_layer not in (None, self.default_layer)
            else ""
        )
        corpus = self.corpus.get("source") or self.corpus.get("name") or "unknown"
        return (
            f"EmotionVectors(model={self.model.get('name', '?')!r}, {n} emotions ({shown}), "
            f"{span}, default layer {self.default_layer}{steer}, d_model {self.d_model}, "
            f"corpus={corpus!r})"
        )

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

    def subset(self, emotions: list[str]) -> EmotionVectors:
        """The same vectors for fewer emotions (in the order given). The split-half geometry
        axes are dropped: they were the axes of the whole set, and PCA applies instead."""
        from dataclasses import replace

        idx = [self.emotions.index(self.resolve(e)) for e in emotions]
        return replace(
            self,
            vectors=self.vectors[:, idx],
            emotions=[self.emotions[i] for i in idx],
            readers=None if self.readers is None else self.readers[:, idx],
            geometry_scores=None,
        )

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
        keys = ["d_model", "n_layers", "fingerprint"]
        # The fingerprint samples weight values, which a bfloat16/float16 load rounds: across
        # dtypes the same named model of the same architecture is accepted on its shape.
        other_dtype = mine.get("dtype", "float32") != theirs.get("dtype", "float32")
        if other_dtype and all(mine.get(k) == theirs.get(k) for k in ("name", "architecture")):
            keys.remove("fingerprint")
        for key in keys:
            if mine.get(key) != theirs.get(key):
                raise VectorFileError(
                    f"these vectors belong to model {mine.get('name')!r} "
                    f"({key} {mine.get(key)}), not to the loaded {theirs['name']!r} "
                    f"({key} {theirs.get(key)}); rebuild them with "
                    f"`emovec extract --model {theirs['name']}` or load the matching model"
                )

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash never leaves a half-written file under ``path``).

        The metadata holds a checksum of every tensor, which :meth:`load` verifies.
        """
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
        if self.geometry_scores is not None:
            tensors["geometry_scores"] = self.geometry_scores.float().contiguous()
        meta = self.info()
        meta.pop("residual_norm")
        meta["checksum"] = _checksum(tensors)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"emovec": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read and validate a vector file; every problem is one clear :class:`VectorFileError`.

        The metadata is checked field by field before any tensor is read, tensor shapes and
        types before their data, and the data (checksum, finite values, unit vectors) last.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise VectorFileError(
                f"vector file not found: {path} (build one with `emovec extract --out {path}`)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get("emovec")
                names = list(f.keys())  # noqa: SIM118
                layout = {}
                for name in names:
                    part = f.get_slice(name)
                    layout[name] = (part.get_dtype(), tuple(part.get_shape()))
                meta = _check_meta(path, raw_meta)
                _check_layout(path, meta, layout)
                tensors = {name: f.get_tensor(name) for name in names}
                checksum = _checksum(tensors) if "checksum" in meta else None
        except VectorFileError:
            raise
        except Exception as exc:  # safetensors raises several types for damaged files
            raise VectorFileError(
                f"{path} is not a readable safetensors file ({type(exc).__name__}); "
                "it may be truncated or corrupted: rebuild it with `emovec extract`"
            ) from exc
        if checksum is not None and checksum != meta["checksum"]:
            raise VectorFileError(
                f"{path}: checksum mismatch: the tensors were changed or damaged; "
                "rebuild with `emovec extract`"
            )
        vec = _finite(path, "vectors", tensors["vectors"])
        residual_norm = _finite(path, "residual_norm", tensors["residual_norm"])
        if not bool((residual_norm > 0).all()):
            raise VectorFileError(f"{path}: residual_norm must be positive at every layer")
        mean_activation = _finite(path, "mean_activation", tensors["mean_activation"])
        readers = tensors.get("readers")
        if readers is not None:
            readers = _finite(path, "readers", readers)
        geometry_scores = tensors.get("geometry_scores")
        if geometry_scores is not None:
            geometry_scores = _finite(path, "geometry_scores", geometry_scores)
        norms = vec.double().norm(dim=-1)
        if bool((norms == 0).any()):
            raise VectorFileError(f"{path}: vectors contain an all-zero vector (no direction)")
        if not bool(((norms - 1).abs() <= UNIT_TOLERANCE).all()):
            worst = float((norms - 1).abs().max())
            raise VectorFileError(
                f"{path}: vectors are not unit vectors (a norm is off by {worst:.3g}); "
                "rebuild with `emovec extract`"
            )
        return cls(
            vectors=vec,
            emotions=list(meta["emotions"]),
            layers=list(meta["layers"]),
            default_layer=meta["default_layer"],
            model=meta["model"],
            residual_norm=residual_norm,
            mean_activation=mean_activation,
            params=meta.get("params", {}),
            corpus=meta.get("corpus", {}),
            metrics=meta.get("metrics", {}),
            version=meta.get("version", "?"),
            steer_layer=meta.get("steer_layer"),
            readers=readers,
            geometry_scores=geometry_scores,
        )


#: Most emotions and layers a vector file may have (the catalog has 171 emotions; models a
#: few hundred layers at most): anything more is refused before any work is done.
MAX_EMOTIONS = 10_000
MAX_LAYERS = 1_000
#: How far from 1 the norm of a stored vector may be.
UNIT_TOLERANCE = 1e-3
#: safetensors dtype names accepted for the tensors, and their torch types.
FLOAT_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        dtype = str(tensor.dtype).removeprefix("torch.")
        digest.update(json.dumps([name, dtype, list(tensor.shape)]).encode() + b"\n")
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(path: Path, raw_meta: Any) -> dict[str, Any]:
    """The emovec metadata, every field checked for type and range (one error per problem)."""
    if raw_meta is None:
        raise VectorFileError(f"{path} is a safetensors file but not an emovec vector file")
    if not isinstance(raw_meta, str):
        raise VectorFileError(f"{path}: emovec metadata is not a JSON string")
    try:
        meta = json.loads(raw_meta)
    except (ValueError, RecursionError) as exc:
        raise VectorFileError(f"{path}: emovec metadata is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path}: emovec metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise VectorFileError(f"{path}: unsupported format {meta.get('format')!r}")

    def bad(key: str, why: str) -> VectorFileError:
        return VectorFileError(f"{path}: metadata field {key!r} {why}")

    for key in ("emotions", "layers", "default_layer", "d_model", "model"):
        if key not in meta:
            raise bad(key, "is missing")
    emotions, layers = meta["emotions"], meta["layers"]
    if not isinstance(emotions, list) or not emotions:
        raise bad("emotions", "must be a non-empty list of emotion names")
    if len(emotions) > MAX_EMOTIONS:
        raise bad("emotions", f"lists {len(emotions)} emotions (at most {MAX_EMOTIONS})")
    if not isinstance(layers, list) or not layers:
        raise bad("layers", "must be a non-empty list of layer numbers")
    if len(layers) > MAX_LAYERS:
        raise bad("layers", f"lists {len(layers)} layers (at most {MAX_LAYERS})")
    if not all(isinstance(e, str) for e in emotions):
        raise bad("emotions", "must hold only strings")
    if len(set(emotions)) != len(emotions):
        raise bad("emotions", "has duplicate names")
    known = set(catalog.emotions())
    unknown = [e for e in emotions if e not in known]
    if unknown:
        raise bad("emotions", f"has names not in the catalog: {unknown[:5]!r}")
    if not all(_is_int(x) for x in layers):
        raise bad("layers", "must hold only integers")
    if any(x < 0 for x in layers):
        raise bad("layers", "must hold only layer numbers >= 0")
    if len(set(layers)) != len(layers):
        raise bad("layers", "has duplicate layers")
    if any(a > b for a, b in zip(layers, layers[1:], strict=False)):
        raise bad("layers", "must be sorted")
    stored = set(layers)
    for key in ("default_layer", "steer_layer"):
        if key == "steer_layer" and key not in meta:
            continue
        if not _is_int(meta[key]):
            raise bad(key, "must be an integer")
        if meta[key] not in stored:
            raise bad(key, f"is {meta[key]}, which is not among the stored layers")
    if not _is_int(meta["d_model"]) or meta["d_model"] <= 0:
        raise bad("d_model", "must be a positive integer")
    if not isinstance(meta["model"], dict):
        raise bad("model", "must be a JSON object")
    for key in ("params", "corpus", "metrics"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(key, "must be a JSON object")
    for key in ("version", "checksum"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(key, "must be a string")
    return meta


def _check_layout(
    path: Path, meta: dict[str, Any], layout: dict[str, tuple[str, tuple[int, ...]]]
) -> None:
    """Tensor dtypes and shapes, checked against the metadata before any data is read."""
    missing = {"vectors", "residual_norm", "mean_activation"} - set(layout)
    if missing:
        raise VectorFileError(f"{path}: missing tensors {sorted(missing)}")
    n_layers, n_emotions, d_model = len(meta["layers"]), len(meta["emotions"]), meta["d_model"]
    expected = {
        "vectors": (n_layers, n_emotions, d_model),
        "readers": (n_layers, n_emotions, d_model),
        "residual_norm": (n_layers,),
        "mean_activation": (n_layers, d_model),
    }
    if "geometry_scores" in layout:
        shape = layout["geometry_scores"][1]
        axes = shape[2] if len(shape) == 3 else 0
        expected["geometry_scores"] = (n_layers, n_emotions, axes if 0 < axes < n_emotions else -1)
    for name, shape in expected.items():
        if name not in layout:
            continue
        dtype, actual = layout[name]
        if dtype not in FLOAT_DTYPES:
            raise VectorFileError(
                f"{path}: tensor {name!r} has type {dtype}; expected a float type "
                f"({', '.join(FLOAT_DTYPES)})"
            )
        if actual != shape:
            raise VectorFileError(
                f"{path}: tensor {name!r} has shape {actual} but metadata says {shape} "
                + (
                    "(layers, emotions, axes < emotions)"
                    if name == "geometry_scores"
                    else "(layers, emotions, d_model)"
                )
            )


def _finite(path: Path, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32, refused if any value is NaN or infinite (also after conversion)."""
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise VectorFileError(f"{path}: {name} contain NaN or infinite values")
    return tensor
