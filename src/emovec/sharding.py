"""Sharded extraction: each shard sums its slice of the corpus, a merge adds the sums in order.

A shard (``emovec extract --shard i/N -o part_i``) runs the model over every N-th story and
neutral text from the i-th and writes a *partial file*: float64 per-emotion sums and counts,
the split halves' sums, held-out stories, the within-emotion and neutral scatter sums, and
token and norm counts (safetensors plus JSON metadata). :func:`merge` checks that the parts
belong together (same model, corpus, settings and N; every shard once) and adds them in shard
order; :func:`emovec.extraction.finish` then builds the same vector file a single process
would (float64 sums make the order of addition invisible in the float32 vectors).
:func:`extract_on_ray` runs the shards as Ray tasks on a local or existing cluster.

The activation cache works per text, so shards share it when they share a filesystem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from emovec.corpus import Corpus
from emovec.errors import EmovecError
from emovec.extraction import ExtractionSettings, PartialSums, accumulate, finish
from emovec.files import write_atomic
from emovec.vectors import EmotionVectors

FORMAT = "emovec.partial/1"
_TENSORS = (
    "sums",
    "counts",
    "half_sums",
    "half_counts",
    "held",
    "story_scatter",
    "scatter",
    "total",
    "norm_sum",
)


class ShardError(EmovecError, ValueError):
    """Partial files that cannot be merged: gaps, duplicates, or mixed settings."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)``, refused unless 0 <= i < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ShardError(f"--shard takes i/N, for example 0/4; got {text!r}") from None
    if not 0 <= i < n:
        raise ShardError(f"--shard {text}: need 0 <= i < N")
    return i, n


def save_partial(partial: PartialSums, path: str | Path) -> Path:
    """Write a partial file atomically (safetensors: float64 sums, metadata as JSON)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: getattr(partial, name).contiguous()
        for name in _TENSORS
        if getattr(partial, name) is not None
    }
    meta = {f.name: getattr(partial, f.name) for f in fields(partial) if f.name not in _TENSORS} | {
        "format": FORMAT
    }
    write_atomic(path, save(tensors, metadata={"emovec": json.dumps(meta)}))
    return path


def load_partial(path: str | Path) -> PartialSums:
    """Read a partial file written by :func:`save_partial`; one clear error otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ShardError(f"partial file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("emovec", "{}"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ShardError(f"{path} is not a readable partial file ({type(exc).__name__})") from exc
    if meta.get("format") != FORMAT:
        raise ShardError(
            f"{path} is not an emovec partial file (write one with `emovec extract --shard i/N`)"
        )
    meta.pop("format")
    meta["shard"] = tuple(meta["shard"])
    return PartialSums(**meta, **{name: tensors.get(name) for name in _TENSORS})


def _comparable(value: Any) -> Any:
    """Settings that must agree between shards (the batch size may differ: results do not
    depend on it)."""
    if isinstance(value, dict) and "batch_size" in value:
        return {k: v for k, v in value.items() if k != "batch_size"}
    return value


def merge(parts: Sequence[PartialSums]) -> PartialSums:
    """Add shards' sums in shard order; refuse parts that do not make one whole corpus."""
    if not parts:
        raise ShardError("no partial files to merge")
    parts = sorted(parts, key=lambda p: p.shard[0])
    first = parts[0]
    n = first.shard[1]
    for part in parts:
        for key in ("settings", "corpus", "layers", "emotions", "split"):
            theirs, mine = _comparable(getattr(part, key)), _comparable(getattr(first, key))
            if theirs != mine:
                if isinstance(mine, dict):
                    differ = sorted(
                        k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                    )
                    what = f"{key} differ in {', '.join(differ)}"
                else:
                    what = f"{key} differ"
                raise ShardError(
                    f"shard {part.shard[0]}/{part.shard[1]} and shard {first.shard[0]}/{n}: "
                    f"{what}; all shards must be built with the same corpus and settings"
                )
        if part.model.get("fingerprint") != first.model.get("fingerprint"):
            raise ShardError(
                f"shard {part.shard[0]}/{part.shard[1]} was built with another model "
                f"({part.model.get('name')}) than shard {first.shard[0]} "
                f"({first.model.get('name')})"
            )
        if part.shard[1] != n:
            raise ShardError(f"mixed shard counts: {first.shard[1]} and {part.shard[1]}")
    have = [p.shard[0] for p in parts]
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        dupes = sorted({i for i in have if have.count(i) > 1})
        problems = [f"missing {missing}"] if missing else []
        problems += [f"duplicated {dupes}"] if dupes else []
        raise ShardError(f"shards of {n}: {'; '.join(problems)}; merge needs each i/{n} once")

    def add(name: str) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        out = getattr(first, name).clone()
        for part in parts[1:]:
            out += getattr(part, name)
        return out

    order = sorted((i, p, r) for p, part in enumerate(parts) for r, i in enumerate(part.held_ids))
    held = (
        torch.stack([parts[p].held[r] for _, p, r in order])
        if order
        else first.held.new_zeros((0, *first.held.shape[1:]))
    )
    # Tensors added in shard order, held-out stories in corpus order, counts summed.
    return replace(
        first,
        **{name: add(name) for name in _TENSORS if name != "held"},
        held=held,
        held_ids=[i for i, _, _ in order],
        held_labels=[parts[p].held_labels[r] for _, p, r in order],
        n_neutral=sum(p.n_neutral for p in parts),
        norm_count=sum(p.norm_count for p in parts),
        tokens=sum(p.tokens for p in parts),
        padded_tokens=sum(p.padded_tokens for p in parts),
        cached_texts=sum(p.cached_texts for p in parts),
        shard=(0, 1),
    )


def merge_files(paths: Sequence[str | Path]) -> EmotionVectors:
    """The vector file of a whole corpus from its shards' partial files."""
    return finish(merge([load_partial(p) for p in paths]))


def _ray_shard(model: str, corpus, settings: dict[str, Any], shard, cache) -> PartialSums:
    from emovec.models import load_model

    lm = load_model(model)
    return accumulate(lm, corpus, ExtractionSettings(**settings), cache=cache, shard=shard)


def extract_on_ray(
    model: str,
    corpus: Corpus | str,
    shards: int,
    settings: ExtractionSettings | None = None,
    address: str | None = None,
    cache: bool | str = True,
    cpus_per_shard: float = 1,
    gpus_per_shard: float = 0,
) -> EmotionVectors:
    """Run ``shards`` shards as Ray tasks (a local cluster when ``address`` is None, else the
    cluster at ``address``) and merge them in order. ``model`` is a name or path every worker
    can load; ``corpus`` a name or path, or a :class:`Corpus` (sent to the workers)."""
    try:
        import ray
    except ImportError:
        raise ShardError("Ray is not installed: pip install 'emovec[ray]'") from None
    settings = settings or ExtractionSettings()
    settings.check()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=max(1, int(shards * cpus_per_shard)), include_dashboard=False)
    try:
        task = ray.remote(num_cpus=cpus_per_shard, num_gpus=gpus_per_shard)(_ray_shard)
        refs = [
            task.remote(model, corpus, asdict(settings), (i, shards), cache) for i in range(shards)
        ]
        return finish(merge(ray.get(refs)))
    finally:
        if started_here:
            ray.shutdown()
