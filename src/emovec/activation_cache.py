"""A content-addressed store of per-text pooled activations, so the model runs once per text.

Extraction reduces every text to one pooled residual mean per layer before any method
choice is applied (denoising share, hold-out, emotion subset, which stories form the corpus).
Keeping those per-text means lets re-extraction with other settings, a grown corpus, or a
subset skip the model for every text it has seen: a cached text costs a file read instead of
a forward pass.

Key: the model's weight fingerprint and dtype name a folder; inside, a text is addressed by
a hash of its token ids (after truncation) and the pooling start, which together decide its
pooled means exactly. Each shard is a safetensors file written atomically, so a killed run
leaves only whole shards behind and a rerun picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from emovec.files import atomic_path

if TYPE_CHECKING:
    from emovec.models import LanguageModel

FORMAT = "emovec.pooled/1"


def text_key(ids: Sequence[int], start_token: int) -> str:
    """The address of one text's pooled means: its token ids and where pooling starts."""
    digest = hashlib.sha256(f"{start_token}:".encode())
    digest.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:32]


class PooledCache:
    """Per-text pooled means [layers, d], residual-norm sums [layers] and pooled counts.

    ``get`` answers from every shard on disk; ``put`` buffers rows and ``flush`` writes them
    as one new shard: every ``flush_every`` rows, when the oldest buffered row is
    ``flush_seconds`` old (so a killed run of a slow model loses minutes, not hours), and at
    the end of a pass.
    """

    def __init__(self, folder: str | Path, flush_every: int = 256, flush_seconds: float = 300.0):
        self.folder = Path(folder)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._oldest_pending: float | None = None
        self._where: dict[str, tuple[Path, int, tuple[int, ...]]] = {}
        self._pending: list[tuple[str, tuple[int, ...], torch.Tensor, torch.Tensor, int]] = []
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                self._index(shard)

    @classmethod
    def for_model(cls, lm: LanguageModel, root: str | Path | None = None) -> PooledCache:
        """The cache folder of one model's weights (under ``$EMOVEC_CACHE/pooled`` by default)."""
        from emovec.models import cache_dir

        dtype = str(lm.model.dtype).removeprefix("torch.")
        base = Path(root) if root is not None else cache_dir() / "pooled"
        return cls(base / f"{lm.fingerprint}-{dtype}")

    def _index(self, shard: Path) -> None:
        try:
            with safe_open(shard, "pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return
            keys = json.loads(meta["keys"])
            layers = tuple(json.loads(meta["layers"]))
        except Exception:  # an unreadable shard is skipped; its texts are simply recomputed
            return
        for row, key in enumerate(keys):
            self._where[key] = (shard, row, layers)

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def has(self, key: str, layers: Sequence[int]) -> bool:
        hit = self._where.get(key)
        return hit is not None and set(layers) <= set(hit[2])

    def get(
        self, keys: Sequence[str], layers: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled [len(layers), n, d], norm sums [len(layers), n], counts [n] for cached keys."""
        by_shard: dict[Path, list[tuple[int, int, tuple[int, ...]]]] = {}
        for i, key in enumerate(keys):
            shard, row, have = self._where[key]
            by_shard.setdefault(shard, []).append((i, row, have))
        pooled = norms = counts = torch.empty(0)
        for shard, rows in by_shard.items():
            with safe_open(shard, "pt") as f:
                p, nm, c = f.get_tensor("pooled"), f.get_tensor("norm_sum"), f.get_tensor("count")
            for i, row, have in rows:
                cols = [have.index(layer) for layer in layers]
                if pooled.numel() == 0:
                    pooled = torch.empty(len(layers), len(keys), p.shape[-1], dtype=p.dtype)
                    norms = torch.empty(len(layers), len(keys), dtype=torch.float64)
                    counts = torch.empty(len(keys), dtype=torch.int64)
                pooled[:, i] = p[row, cols]
                norms[:, i] = nm[row, cols]
                counts[i] = c[row]
        return pooled, norms, counts

    def put(
        self,
        keys: Sequence[str],
        layers: Sequence[int],
        pooled: torch.Tensor,
        norm_sums: torch.Tensor,
        counts: torch.Tensor,
    ) -> None:
        """Buffer one batch: pooled [L, b, d], norm sums [L, b], pooled-position counts [b]."""
        layers = tuple(layers)
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()
        for r, key in enumerate(keys):
            self._pending.append(
                (key, layers, pooled[:, r].clone(), norm_sums[:, r].clone(), int(counts[r]))
            )
        too_old = time.monotonic() - self._oldest_pending >= self.flush_seconds
        if len(self._pending) >= self.flush_every or too_old:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one new shard (atomically: temp file, then rename)."""
        if not self._pending:
            return
        by_layers: dict[tuple[int, ...], list[Any]] = {}
        for item in self._pending:
            by_layers.setdefault(item[1], []).append(item)
        self.folder.mkdir(parents=True, exist_ok=True)
        for layers, items in by_layers.items():
            shard = self.folder / f"shard-{uuid.uuid4().hex[:12]}.safetensors"
            tensors = {
                "pooled": torch.stack([it[2] for it in items]).contiguous(),
                "norm_sum": torch.stack([it[3] for it in items]).contiguous(),
                "count": torch.tensor([it[4] for it in items], dtype=torch.int64),
            }
            meta = {
                "format": FORMAT,
                "keys": json.dumps([it[0] for it in items]),
                "layers": json.dumps(list(layers)),
            }
            with atomic_path(shard) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
            for row, it in enumerate(items):
                self._where[it[0]] = (shard, row, layers)
        self._pending.clear()
        self._oldest_pending = None
