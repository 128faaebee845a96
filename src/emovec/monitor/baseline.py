"""Calibration: per-emotion score mean and spread, so z-scores mean the same everywhere.

Raw cosines differ in scale between emotions, layers and models; a :class:`Baseline` turns
them into ``z = (score - mean) / std``. :func:`calibrate` measures one (cached),
:func:`load_or_calibrate` is the policy front ends share: a saved baseline file when there
is one, else calibrate, saying first how long it will take.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emovec.files import write_atomic
from emovec.models import LanguageModel
from emovec.monitor.checks import is_count, is_score, strict_json
from emovec.monitor.errors import MonitorError
from emovec.monitor.passes import ScoreRecorder
from emovec.vectors import EmotionVectors

BASELINE_FORMAT = "emovec.baseline/1"
#: Calibration tokens skipped at the start of each text: the first positions of a sequence
#: carry huge, content-free activations that would widen every emotion's spread.
SKIP_FIRST = 4


def baseline_key(vectors: EmotionVectors, layer: int, center: bool) -> str:
    """A short hash of what a baseline depends on: the directions and centring at one layer."""
    row = vectors.layer_index(layer)
    digest = hashlib.sha256()
    digest.update(json.dumps([vectors.model.get("fingerprint"), layer, center]).encode())
    digest.update(vectors.reading_directions(vectors.layers[row]).float().numpy().tobytes())
    digest.update(vectors.mean_activation[row].float().numpy().tobytes())
    digest.update("\n".join(vectors.emotions).encode())
    return digest.hexdigest()[:16]


@dataclass
class Baseline:
    """Per-emotion mean and standard deviation of monitor scores over calibration tokens.

    ``z = (score - mean) / std``: a z of 3 is equally unusual for every emotion and model, so
    one alert threshold can serve them all.
    """

    emotions: list[str]
    layer: int
    mean: np.ndarray
    std: np.ndarray
    source: str
    n_tokens: int
    key: str
    center: bool = True

    def select(self, emotions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the named emotions, in that order."""
        missing = [e for e in emotions if e not in self.emotions]
        if missing:
            raise MonitorError(
                f"the baseline has no {', '.join(missing)}; calibrate again with these emotions"
            )
        index = [self.emotions.index(e) for e in emotions]
        return self.mean[index], self.std[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BASELINE_FORMAT,
            "emotions": self.emotions,
            "layer": self.layer,
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "source": self.source,
            "n_tokens": self.n_tokens,
            "key": self.key,
            "center": self.center,
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        """Read a saved baseline; anything else (missing, damaged, foreign) is a MonitorError."""
        path = Path(path)
        try:
            return cls._from_data(strict_json(path.read_text("utf-8")))
        except FileNotFoundError:
            raise MonitorError(f"baseline file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise MonitorError(
                f"{path} is not an emovec baseline ({type(exc).__name__}); "
                "write one with `emovec monitor --calibrate-out FILE` or Baseline.save"
            ) from None

    @classmethod
    def _from_data(cls, data: Any) -> Baseline:
        """A baseline from parsed JSON; a malformed one raises ValueError, KeyError or
        TypeError, which :meth:`load` reports as one MonitorError naming the file."""
        if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
            raise KeyError("format")
        emotions, layer, n_tokens = data["emotions"], data["layer"], data["n_tokens"]
        if not (
            isinstance(emotions, list)
            and emotions
            and all(isinstance(e, str) and e for e in emotions)
            and len(set(emotions)) == len(emotions)
        ):
            raise ValueError("emotions")
        if not (is_count(layer) and is_count(n_tokens)):
            raise ValueError("layer or n_tokens")
        mean, std = data["mean"], data["std"]
        for values in (mean, std):
            if not (
                isinstance(values, list)
                and len(values) == len(emotions)
                and all(is_score(x) for x in values)
            ):
                raise ValueError("mean or std")
        mean = np.asarray(mean, dtype=np.float64).astype(np.float32)
        std = np.asarray(std, dtype=np.float64).astype(np.float32)
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("mean or std out of range")  # std > 0 as a float32 too
        source, key, center = data["source"], data["key"], data.get("center", True)
        if not (isinstance(source, str) and isinstance(key, str) and isinstance(center, bool)):
            raise TypeError("source, key or center")
        return cls(
            emotions=list(emotions),
            layer=layer,
            mean=mean,
            std=std,
            source=source,
            n_tokens=n_tokens,
            key=key,
            center=center,
        )

    def check(self, vectors: EmotionVectors, layer: int, center: bool = True) -> None:
        """Refuse a baseline measured with other vectors, another layer or other centring."""
        if self.key != baseline_key(vectors, layer, center):
            raise MonitorError(
                f"this baseline was measured with other vectors or layer (its layer {self.layer}); "
                "calibrate again for these vectors"
            )


def neutral_calibration_texts(lm: LanguageModel, limit: int = 64) -> list[str]:
    """The bundled neutral dialogues, rendered in the model's own chat format when it has one."""
    from emovec.corpus import load_corpus

    dialogues = load_corpus("curated").neutral[:limit]
    if lm.has_chat_template:
        return [lm.format_chat(d["turns"], add_generation_prompt=False) for d in dialogues]
    from emovec.corpus import render_dialogue

    return [render_dialogue(d) for d in dialogues]


def calibrate(
    lm: LanguageModel,
    vectors: EmotionVectors,
    texts: Sequence[str] | None = None,
    layer: int | None = None,
    center: bool = True,
    limit: int = 64,
    max_tokens: int = 256,
    batch_size: int = 8,
    cache: bool | str | Path = True,
    on_start: Callable[[int, int], None] | None = None,
    progress: bool = False,
) -> Baseline:
    """Measure each emotion's score mean and spread over calibration tokens, once.

    ``texts`` defaults to the first ``limit`` neutral dialogues (so z = "how unusual compared
    with an ordinary assistant conversation"); pass your own traffic instead to calibrate on
    it. Each text is cut to ``max_tokens``. With ``cache=True`` the result is kept under
    ``$EMOVEC_CACHE/baselines`` keyed by vectors, layer and texts, and reused; a path caches
    there instead; ``False`` always recomputes. When it does measure (no cached result),
    ``on_start(texts, tokens)`` is called first, so that a caller can say what is coming and
    how long it may take; ``progress`` counts the tokens run.
    """
    from emovec.extraction import right_padded
    from emovec.hooks import run_to_layer
    from emovec.models import cache_dir
    from emovec.progress import token_progress

    vectors.check_model(lm)
    layer = vectors.default_layer if layer is None else layer
    key = baseline_key(vectors, layer, center)
    source = "neutral dialogues" if texts is None else "user texts"
    texts = list(neutral_calibration_texts(lm, limit) if texts is None else texts)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MonitorError("no calibration text: give at least one non-empty text")
    digest = hashlib.sha256(json.dumps([key, max_tokens, texts]).encode()).hexdigest()[:16]
    if cache is True:
        cache_path: Path | None = cache_dir() / "baselines" / f"{digest}.json"
    else:
        cache_path = Path(cache) if cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = Baseline.load(cache_path)
            cached.check(vectors, layer, center)
            return cached
        except MonitorError:
            pass  # stale or damaged: measure again and overwrite
    recorder = ScoreRecorder(lm, vectors, layer=layer, center=center)
    rows = [lm.encode(t)[:max_tokens] for t in texts]
    if on_start is not None:
        on_start(len(rows), sum(map(len, rows)))
    total = np.zeros(len(recorder.emotions), dtype=np.float64)
    square = np.zeros_like(total)
    count = 0
    with token_progress(sum(map(len, rows)), "calibrating", progress) as advance:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            ids, attention = right_padded(batch, lm.tokenizer.pad_token_id)
            recorder.chunks.clear()
            with recorder.watching():
                run_to_layer(
                    lm.model,
                    layer,
                    input_ids=ids.to(lm.device),
                    attention_mask=attention.to(lm.device),
                )
            scores = recorder.scores().astype(np.float64)
            keep = attention.numpy().astype(bool)
            keep[:, :SKIP_FIRST] = False
            chosen = scores[keep]
            total += chosen.sum(axis=0)
            square += (chosen**2).sum(axis=0)
            count += len(chosen)
            advance(sum(map(len, batch)))
    if count < 2:
        raise MonitorError("calibration texts are too short: give texts of a few sentences")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 1e-12))
    baseline = Baseline(
        emotions=list(recorder.emotions),
        layer=layer,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        source=f"{source} ({len(texts)} texts)",
        n_tokens=count,
        key=key,
        center=center,
    )
    if cache_path is not None:
        baseline.save(cache_path)
    return baseline


def calibration_estimate(lm: LanguageModel, layer: int, tokens: int) -> str:
    """A rough duration of one forward pass over ``tokens`` up to ``layer`` (two FLOPs per
    weight and token at a rate typical of the device), so that users know whether to wait."""
    import torch

    from emovec.progress import duration

    weights = sum(p.numel() for block in lm.layers[: layer + 1] for p in block.parameters())
    rate = 1e13 if lm.device.type == "cuda" else 8e9 * torch.get_num_threads()
    return duration(2 * weights * tokens / rate)


def read_calibration_texts(path: str | Path) -> list[str]:
    """Calibration texts from a file, one per blank-line separated block."""
    path = Path(path)
    try:
        raw = path.read_text("utf-8")
    except OSError as exc:
        raise MonitorError(
            f"cannot read calibration texts {path}: {exc.strerror or exc}; "
            "give a readable text file, texts separated by blank lines"
        ) from None
    except UnicodeDecodeError:
        raise MonitorError(
            f"cannot read calibration texts {path}: not UTF-8 text; give a UTF-8 text file"
        ) from None
    return [block for block in raw.split("\n\n") if block.strip()]


def load_or_calibrate(
    lm: LanguageModel,
    vectors: EmotionVectors,
    layer: int | None = None,
    path: str | Path | None = None,
    texts: Sequence[str] | None = None,
    limit: int = 64,
    announce: Callable[[str], None] | None = None,
    *,
    source: str | None = None,
    progress: bool = False,
) -> Baseline:
    """The baseline a monitoring run should use: the one saved at ``path``, else a new one.

    A file at ``path`` is used when no ``texts`` are given; it must have been measured with
    these vectors at this layer (a :class:`MonitorError` says to calibrate again otherwise,
    rather than silently replacing a file the user named). Otherwise it calibrates on
    ``texts``, or on the first ``limit`` neutral dialogues (:func:`calibrate`'s own cache
    spares repeated runs), and saves the result to ``path`` when one is given. Before a
    measurement runs, ``announce(message)`` gets one line saying on what and roughly how long;
    ``source`` names the texts in it (e.g. ``"texts of calib.txt"``), ``progress`` counts
    the tokens on stderr.
    """
    at = vectors.default_layer if layer is None else layer
    if path is not None and Path(path).exists() and texts is None:
        found = Baseline.load(path)
        found.check(vectors, at)
        return found
    label = "neutral dialogues" if texts is None else (source or "texts")

    def on_start(n_texts: int, n_tokens: int) -> None:
        if announce is not None:
            announce(
                f"calibrating the z-score baseline on {n_texts} {label} ({n_tokens} tokens, "
                f"roughly {calibration_estimate(lm, at, n_tokens)}; once: the result is cached)"
            )

    found = calibrate(
        lm,
        vectors,
        texts=texts,
        layer=layer,
        limit=limit,
        on_start=on_start,
        progress=progress,
    )
    if path is not None:
        found.save(path)
    return found
