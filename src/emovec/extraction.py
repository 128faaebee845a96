"""Building emotion vectors from a corpus, the way the reference study did.

1. Every story goes through the model once; hooks on the decoder blocks average the residual
   stream over the story's tokens from the ``start_token``-th on (1-based, 50 in the study).
   A text shorter than that is averaged over its second half (the early tokens carry little
   of the story yet). Padding is excluded exactly: batches are right-padded and pooling
   weights are zero on padding. The pass stops after the deepest requested layer and never
   computes the LM head.
2. Per emotion: the mean of its stories' averages, minus the mean over emotions.
3. Denoising (``denoise``): principal components that together explain ``neutral_variance``
   of the variance (0.5 in the study) are projected out of every vector. Their source is
   the neutral dialogues (``"dialogues"``, the study's method), the neutral stories
   (``"neutral-stories"``: same style as the emotion stories, so style directions go too),
   or the story-to-story variation within emotions (``"within"``: what varies most between
   stories of one emotion is topic and voice, not emotion); ``"none"`` or
   ``neutral_variance=0`` switches it off.
4. Vectors are unit-normalised; cosine readouts and norm-scaled steering then need no
   further convention.
5. Reading directions (``reader``): ``"mean"`` reads with the vectors themselves;
   ``"whitened"`` reads with each vector multiplied by the inverse of the within-emotion
   covariance, shrunk towards its mean variance by ``shrinkage`` (linear discriminant
   directions): they weigh down what varies between stories of one emotion. Steering always
   uses the vectors.
6. Reliability: the stories are split in two halves (by topic when every emotion covers the
   same topics, else alternately), vectors are built from each half with the same method,
   and per layer the mean same-emotion cosine between halves (and the correlation of the two
   halves' emotion-by-emotion similarity matrices) is stepped up to the whole corpus with
   the Spearman-Brown formula, 2r / (1 + r). Recorded in ``metrics["reliability"]``.

Memory is constant in the number of stories: only per-emotion sums, a d_model x d_model
scatter matrix per layer for the neutral texts, and held-out stories (if any) are kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from emovec.activation_cache import PooledCache, text_key
from emovec.corpus import CURATED, Corpus, load_corpus
from emovec.errors import InputError
from emovec.hooks import StopForward, backbone, residual_hooks, stopping_after
from emovec.models import LanguageModel
from emovec.scoring import cosine_scores, top_k_hits
from emovec.stats import spearman_brown
from emovec.vectors import EmotionVectors

#: Shrinkage of whitened readers' within-emotion covariance: chosen, like the other defaults,
#: by label-free criteria (reliability and held-out accuracy; docs/fidelity.md).
DEFAULT_SHRINKAGE = 0.9


@dataclass
class ExtractionSettings:
    """Every method parameter; all of them are stored in the vector file."""

    start_token: int = 50
    neutral_variance: float = 0.5
    #: texts per forward pass; None = :func:`default_batch_size` (results do not depend on it)
    batch_size: int | None = None
    max_tokens: int = 512
    layers: list[int] | None = None
    holdout_every: int = 0
    #: source of the components projected out: see DENOISE. The defaults of ``denoise`` and
    #: ``reader`` were chosen by label-free criteria (split-half reliability, held-out
    #: accuracy on same-style and other-style texts; docs/fidelity.md); the study's method is
    #: ``denoise="dialogues", reader="mean"``.
    denoise: str = "none"
    #: directions used for reading: see READERS
    reader: str = "whitened"
    #: shrinkage of the within-emotion covariance towards a multiple of the identity (whitened)
    shrinkage: float = DEFAULT_SHRINKAGE
    #: principal axes the geometry experiment reports: see GEOMETRY. "split-half" was chosen
    #: by a label-free criterion (its first two axes replicate across halves at least as
    #: well as PCA's; docs/fidelity.md); the study's is "pca". Without two halves that each
    #: have every emotion, a file falls back to "pca" and says so in its params.
    geometry: str = "split-half"

    def check(self) -> None:
        """Refuse unknown method names and out-of-range values, naming the choices."""
        if self.denoise not in DENOISE:
            raise InputError(
                f"unknown denoising method {self.denoise!r}: choose one of {', '.join(DENOISE)}"
            )
        if self.reader not in READERS:
            raise InputError(f"unknown reader {self.reader!r}: choose one of {', '.join(READERS)}")
        if self.geometry not in GEOMETRY:
            raise InputError(
                f"unknown geometry method {self.geometry!r}: choose one of {', '.join(GEOMETRY)}"
            )
        if not 0 < self.shrinkage <= 1:
            raise InputError(f"shrinkage must be in (0, 1], got {self.shrinkage}")
        if not 0 <= self.neutral_variance < 1:
            raise InputError(f"neutral_variance must be in [0, 1), got {self.neutral_variance}")
        if self.start_token < 1:
            raise InputError(f"start_token must be >= 1, got {self.start_token}")


#: Denoising sources (the study's is "dialogues").
DENOISE = {
    "dialogues": "principal components of the neutral dialogues",
    "neutral-stories": "principal components of the neutral stories",
    "within": "principal components of the story-to-story variation within emotions",
    "none": "no denoising",
}
#: Reading directions.
READERS = {
    "mean": "the unit vectors themselves (class-mean differences)",
    "whitened": "vectors times the inverse shrunk within-emotion covariance (discriminant)",
}
#: Principal axes of the emotion geometry (the study's is "pca").
GEOMETRY = {
    "pca": "principal components of the reading directions",
    "split-half": "principal axes of the cross-covariance between the directions built from two "
    "disjoint halves of the stories (only variance that replicates across halves counts)",
}
#: Method parameters added after vector files were first written, and the value that files
#: written before them implicitly used.
ADDED_PARAMS = {"geometry": "pca"}
#: Most principal axes a vector file stores for the split-half geometry.
GEOMETRY_AXES = 10


def pooling_weights(lengths: torch.Tensor, width: int, start_token: int) -> torch.Tensor:
    """[batch, width] weights that average each text over its pooled positions (rows sum to 1).

    Positions ``start_token-1 .. n-1`` for a text of n tokens; ``n//2 .. n-1`` when n is
    shorter than ``start_token``.
    """
    positions = torch.arange(width).unsqueeze(0)
    n = lengths.unsqueeze(1)
    first = torch.where(n >= start_token, torch.full_like(n, start_token - 1), n // 2)
    mask = (positions >= first) & (positions < n)
    return mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1).float()


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def right_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as a right-padded [batch, width] id tensor and its attention mask."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention[r, : len(row)] = 1
    return input_ids, attention


@functools.cache
def _libc_trim() -> Any:
    """glibc's ``malloc_trim`` if this process uses glibc, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS.

    Batches of varied shapes leave glibc's heap fragmented, so a long extraction's resident
    size would creep up with corpus size although nothing per story is kept. Trimming once
    per batch (microseconds against a batch's seconds) keeps the peak flat.
    """
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def default_batch_size(lm: LanguageModel) -> int:
    """Small batches on a CPU, where two workers each run one (fastest here: 4, measured in
    docs/performance.md; larger batches outgrow the caches); large ones on a GPU."""
    return 4 if lm.device.type == "cpu" else 32


def default_workers(lm: LanguageModel) -> int:
    """Batches run side by side on a CPU: two workers with half the threads each.

    Small models leave a two-threaded matrix product waiting on synchronisation; two
    single-threaded passes over different batches ran ~20% faster than one two-threaded pass
    on 2 cores (docs/performance.md). A GPU runs one batch at a time.
    """
    return 2 if lm.device.type == "cpu" and torch.get_num_threads() >= 2 else 1


@contextmanager
def _threads_per_worker(workers: int) -> Iterator[None]:
    """Split torch's intra-op threads between the workers for the duration of a pass."""
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, threads // workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors on the host, with one wait for the device whatever their number.

    On CUDA they are copied without blocking into pinned memory, then the stream is waited
    for once; host tensors are returned as they are.
    """
    if all(t.device.type == "cpu" for t in tensors):
        return tensors
    if not all(t.device.type == "cuda" for t in tensors):
        return tuple(t.cpu() for t in tensors)
    host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors)
    for target, source in zip(host, tensors, strict=True):
        target.copy_(source, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return host


class PooledPass:
    """One forward pass per batch, pooled residual means at every requested layer.

    ``run(ids)`` yields ``(indices, pooled [layers, batch, d_model])`` per batch, in order,
    and keeps a running sum of residual norms over pooled positions (the steering unit).
    With a :class:`~emovec.activation_cache.PooledCache`, texts seen before come from it and
    new ones are added to it, so only unseen texts reach the model. ``workers`` batches run
    side by side (default: :func:`default_workers`); results do not depend on it.
    """

    def __init__(
        self,
        lm: LanguageModel,
        layers: Sequence[int],
        settings: ExtractionSettings,
        cache: PooledCache | None = None,
        workers: int | None = None,
    ) -> None:
        if settings.batch_size is None:
            settings = replace(settings, batch_size=default_batch_size(lm))
        self.lm, self.layers, self.settings, self.cache = lm, list(layers), settings, cache
        #: The resolved batch size (the settings' own, or the model's default).
        self.batch_size: int = settings.batch_size or default_batch_size(lm)
        self.workers = default_workers(lm) if workers is None else max(1, int(workers))
        self.norm_sum = torch.zeros(len(self.layers), dtype=torch.float64)
        self.norm_count = 0
        self.tokens = 0
        self.padded_tokens = 0
        self.cached_texts = 0
        self._active = threading.local()  # the batch a thread is running, if any

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.lm.encode(t)[: self.settings.max_tokens] for t in texts]

    @torch.no_grad()
    def run(
        self, ids: list[list[int]], progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        size = self.batch_size
        keys = todo = None
        if self.cache is not None:
            keys = [text_key(x, self.settings.start_token) for x in ids]
            done = [i for i, k in enumerate(keys) if self.cache.has(k, self.layers)]
            todo = sorted(set(range(len(ids))) - set(done))
            for j in range(0, len(done), size):
                batch = done[j : j + size]
                pooled, norms, counts = self.cache.get([keys[i] for i in batch], self.layers)
                self._account(norms.sum(dim=1), int(counts.sum()))
                self.cached_texts += len(batch)
                if progress is not None:
                    progress(sum(len(ids[i]) for i in batch))
                yield batch, pooled
        try:
            yield from self._forward(ids, todo, keys, progress)
        finally:
            if self.cache is not None:
                self.cache.flush()

    # -- the model side ---------------------------------------------------------------------

    def _capture(self, layer: int, hidden: torch.Tensor, _offset: int) -> None:
        """Pool one layer's residual into the batch of the calling thread (others: ignored).

        The results stay on the model's device: a copy to the host here would make a GPU
        drain its queue at every read layer, leaving it idle while the host queues the next
        blocks. :meth:`_run_batch` copies the whole batch once, after the pass.
        """
        batch = getattr(self._active, "batch", None)
        if batch is None:
            return
        row = batch["rows"][layer]
        # Pooled in float32 whatever the model's dtype: a bfloat16 mean is off by up to 0.4%.
        pooled = torch.bmm(batch["weights"].unsqueeze(1), hidden.float()).squeeze(1)
        batch["pooled"][row] = pooled
        wide = hidden if hidden.dtype == torch.float32 else hidden.float()
        norms = (wide.norm(dim=-1) * batch["counted"]).double().sum(dim=1)
        batch["norm_sums"][row] = norms

    def _running(self) -> bool:
        """Whether the calling thread is running one of this pass's batches."""
        return getattr(self._active, "batch", None) is not None

    def _run_batch(self, rows_of_ids: list[list[int]]) -> dict[str, Any]:
        lm = self.lm
        input_ids, attention = right_padded(rows_of_ids, lm.tokenizer.pad_token_id)
        lengths = attention.sum(1)
        weights = pooling_weights(lengths, input_ids.shape[1], self.settings.start_token)
        per_text = (weights > 0).sum(dim=1)  # pooled tokens per text, known on the host
        weights = weights.to(lm.device)
        shape = (len(self.layers), len(rows_of_ids))
        batch: dict[str, Any] = {
            "rows": {layer: i for i, layer in enumerate(self.layers)},
            "weights": weights,
            "counted": weights > 0,
            "per_text": per_text,
            "pooled": torch.empty(*shape, lm.d_model, device=lm.device),
            "norm_sums": torch.zeros(shape, dtype=torch.float64, device=lm.device),
            "lengths": lengths,
            "width": input_ids.shape[1],
        }
        self._active.batch = batch
        try:
            with torch.no_grad():
                backbone(lm.model)(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=attention.to(lm.device),
                    use_cache=False,
                )
        except StopForward:
            pass
        finally:
            self._active.batch = None
        batch["pooled"], batch["norm_sums"] = to_host(batch["pooled"], batch["norm_sums"])
        release_freed_memory()
        return batch

    def _results(self, ids: list[list[int]], batches: list[list[int]]) -> Iterator[dict[str, Any]]:
        """Each batch's pooled means, in order, with ``workers`` batches running at once.

        Twice as many are queued: batches come longest first, so a worker that finishes a
        shorter batch must find the next one waiting rather than idle until the longer one
        ahead of it is handed out.
        """
        if self.workers == 1:
            for batch in batches:
                yield self._run_batch([ids[i] for i in batch])
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="emovec-extract") as pool:
            pending: deque[Future[dict[str, Any]]] = deque()
            try:
                for batch in batches:
                    pending.append(pool.submit(self._run_batch, [ids[i] for i in batch]))
                    if len(pending) >= 2 * self.workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _forward(
        self,
        ids: list[list[int]],
        todo: list[int] | None,
        keys: list[str] | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        lm = self.lm
        todo = list(range(len(ids))) if todo is None else todo
        lengths_all = [len(ids[i]) for i in todo]
        batches = [[todo[i] for i in local] for local in _batches(lengths_all, self.batch_size)]
        with (
            residual_hooks(lm.layers, dict.fromkeys(self.layers, self._capture)),
            _threads_per_worker(self.workers),
            # After the deepest read block, this pass's batches stop: no unread blocks, no head.
            stopping_after(lm.layers, max(self.layers), when=self._running),
        ):
            for batch, done in zip(batches, self._results(ids, batches), strict=True):
                pooled, norm_sums, per_text = done["pooled"], done["norm_sums"], done["per_text"]
                self._account(norm_sums.sum(dim=1), int(per_text.sum()))
                self.tokens += int(done["lengths"].sum())
                self.padded_tokens += len(batch) * done["width"]
                if self.cache is not None and keys is not None:
                    keys_of = [keys[i] for i in batch]
                    self.cache.put(keys_of, self.layers, pooled, norm_sums, per_text)
                if progress is not None:
                    progress(int(done["lengths"].sum()))
                yield batch, pooled

    def _account(self, norm_sums: torch.Tensor, count: int) -> None:
        self.norm_sum += norm_sums
        self.norm_count += count

    @property
    def mean_norm(self) -> torch.Tensor:
        return (self.norm_sum / max(self.norm_count, 1)).float()


def pooled_activations(
    lm: LanguageModel,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    settings: ExtractionSettings | None = None,
) -> torch.Tensor:
    """Pooled residual means of a few texts: [n_texts, n_layers, d_model] (for experiments)."""
    settings = settings or ExtractionSettings()
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    passer = PooledPass(lm, layers, settings)
    out = torch.empty(len(texts), len(layers), lm.d_model)
    for batch, pooled in passer.run(passer.tokenize(texts)):
        out[batch] = pooled.transpose(0, 1)
    return out


def top_components(cov: torch.Tensor, variance: float) -> torch.Tensor:
    """Orthonormal [d, k] basis of the top principal directions of a covariance explaining
    ``variance`` of its trace (k = 0 when ``variance`` <= 0)."""
    if variance <= 0:
        return torch.zeros(cov.shape[0], 0, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(cov.double())
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    share = torch.cumsum(values, 0) / values.sum().clamp(min=1e-300)
    k = int(torch.searchsorted(share, torch.tensor(variance, dtype=share.dtype))) + 1
    return vectors[:, : min(k, cov.shape[0])]


def neutral_components(
    scatter: torch.Tensor, total: torch.Tensor, n: int, variance: float
) -> list[torch.Tensor]:
    """Per layer, the top principal directions of the neutral texts explaining ``variance``.

    ``scatter`` [L, d, d] = sum of x x^T, ``total`` [L, d] = sum of x. Returns a list of
    [d, k_L] orthonormal bases (k_L = 0 when denoising is off or there are too few texts).
    """
    bases = []
    for layer in range(scatter.shape[0]):
        if variance <= 0 or n < 2:
            bases.append(torch.zeros(scatter.shape[1], 0, dtype=torch.float64))
            continue
        mean = total[layer] / n
        cov = scatter[layer] / n - torch.outer(mean, mean)
        bases.append(top_components(cov, variance))
    return bases


def within_covariance(
    scatter: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Pooled within-emotion covariance [L, d, d] from the stories' scatter sum x x^T [L, d, d],
    per-emotion sums [L, E, d] and counts [E]: (S - sum_e s_e s_e^T / n_e) / (N - E)."""
    present = counts > 0
    s_e = sums[:, present].double()
    between = torch.einsum("lei,lej->lij", s_e / counts[present].view(1, -1, 1), s_e)
    dof = max(float(counts.sum()) - int(present.sum()), 1.0)
    return (scatter - between) / dof


@dataclass
class Directions:
    """What a method makes of per-emotion sums: unit vectors, reading directions, grand mean."""

    vectors: torch.Tensor  # [L, E, d] float32 unit
    grand: torch.Tensor  # [L, d] float32
    readers: torch.Tensor | None = None  # [L, E, d] float32 unit (whitened), or None

    @property
    def for_reading(self) -> torch.Tensor:
        return self.vectors if self.readers is None else self.readers


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def build_directions(
    sums: torch.Tensor,
    counts: torch.Tensor,
    bases: list[torch.Tensor],
    within: torch.Tensor | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> Directions:
    """Centred, denoised unit vectors, and (with ``within`` [L, d, d]) whitened readers.

    Whitened reader of emotion e: P R^-1 P v_e with P the projection that removes the
    denoising basis and R = (1 - a) P W P + a (tr(P W P) / rank P) I the within-emotion
    covariance W shrunk by a = ``shrinkage``.
    """
    means = sums / counts.clamp(min=1).view(1, -1, 1)
    grand = means.mean(dim=1)
    centred = means - grand.unsqueeze(1)
    vectors = torch.empty_like(centred)
    readers = torch.empty_like(centred) if within is not None else None
    d = sums.shape[-1]
    for layer, basis in enumerate(bases):
        v = centred[layer]
        if basis.shape[1]:
            v = v - (v @ basis) @ basis.T
        vectors[layer] = _unit(v)
        if readers is not None and within is not None:
            proj = torch.eye(d, dtype=torch.float64) - basis @ basis.T
            w = proj @ within[layer].double() @ proj
            scale = float(torch.trace(w)) / max(d - basis.shape[1], 1)
            r = (1 - shrinkage) * w + shrinkage * max(scale, 1e-12) * torch.eye(d, dtype=w.dtype)
            readers[layer] = _unit(torch.linalg.solve(r, v.double().T).T @ proj)
    return Directions(
        vectors.float(), grand.float(), readers.float() if readers is not None else None
    )


def finish_vectors(
    sums: torch.Tensor, counts: torch.Tensor, bases: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-emotion means -> centred, denoised unit vectors [L, E, d], and the grand mean [L, d]."""
    built = build_directions(sums, counts, bases)
    return built.vectors, built.grand


def half_directions(
    half_sums: torch.Tensor,
    half_counts: torch.Tensor,
    bases: list[torch.Tensor],
    within: torch.Tensor | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reading directions [L, E', d] (float64) built from each half of the stories alone, and
    the mask [E] of the E' emotions that have stories in both halves."""
    both = (half_counts > 0).all(dim=0)
    halves = [
        build_directions(half_sums[h][:, both], half_counts[h][both], bases, within, shrinkage)
        for h in (0, 1)
    ]
    a, b = (h.for_reading.double() for h in halves)
    return a, b, both


def split_half_reliability(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Per layer, from the two halves' reading directions ``a``, ``b`` [L, E, d]: mean
    same-emotion cosine (``vector_half``) and the correlation of their emotion-by-emotion
    similarity matrices (``geometry_half``), each also stepped up by Spearman-Brown
    (``vector``, ``geometry``)."""
    vector_half = (a * b).sum(-1).mean(-1).tolist()
    n = a.shape[1]
    upper = torch.triu_indices(n, n, offset=1)
    geometry_half = []
    for layer in range(a.shape[0]):
        sa = (a[layer] @ a[layer].T)[upper[0], upper[1]]
        sb = (b[layer] @ b[layer].T)[upper[0], upper[1]]
        geometry_half.append(float(torch.corrcoef(torch.stack([sa, sb]))[0, 1]) if n > 2 else 0.0)
    return {
        "vector_half": [round(r, 4) for r in vector_half],
        "vector": [round(spearman_brown(r), 4) for r in vector_half],
        "geometry_half": [round(r, 4) for r in geometry_half],
        "geometry": [round(spearman_brown(r), 4) for r in geometry_half],
        "n_emotions": n,
    }


def cross_covariance_axes(
    a: torch.Tensor, b: torch.Tensor, k: int = GEOMETRY_AXES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split-half cross-covariance PCA at one layer: emotion scores [E, k], variance ratios
    [k] and unit axes [d, k], from two independent estimates ``a``, ``b`` [E, d] of the same
    directions.

    The axes are the top eigenvectors of the symmetrised cross-covariance (A'B + B'A) / 2 of
    the centred halves. Sampling noise, independent between halves, averages out of it over
    the emotions, while in an ordinary PCA it adds its variance to the axes it happens to
    lie on. Scores are the mean of both halves projected on the axes (signs arbitrary);
    ratios are each axis's share of the positive cross-covariance.
    """
    a = a.double() - a.double().mean(0, keepdim=True)
    b = b.double() - b.double().mean(0, keepdim=True)
    # Work in the span of the emotions (rank <= E - 1 even when d is large).
    basis, _, _ = torch.linalg.svd(torch.cat([a, b]).T, full_matrices=False)
    pa, pb = a @ basis, b @ basis
    cross = (pa.T @ pb + pb.T @ pa) / 2
    values, vecs = torch.linalg.eigh(cross)
    values, vecs = values.flip(0), vecs.flip(1)
    k = min(k, int((values > 0).sum()), a.shape[0] - 1)
    positive = values.clamp(min=0)
    scores = ((pa + pb) / 2) @ vecs[:, :k]
    return scores, positive[:k] / positive.sum().clamp(min=1e-300), basis @ vecs[:, :k]


def axis_replication(a: torch.Tensor, b: torch.Tensor, axes: torch.Tensor) -> list[float]:
    """Label-free check of principal axes at one layer: for each unit axis (a column of
    ``axes`` [d, k]), the correlation across emotions between the two halves' projections on
    it. An axis made of sampling noise does not replicate."""
    a = a.double() - a.double().mean(0, keepdim=True)
    b = b.double() - b.double().mean(0, keepdim=True)
    pa, pb = a @ axes.double(), b @ axes.double()
    return [
        round(float(torch.corrcoef(torch.stack([pa[:, k], pb[:, k]]))[0, 1]), 4)
        for k in range(axes.shape[1])
    ]


def split_half_geometry(
    a: torch.Tensor, b: torch.Tensor, k: int = GEOMETRY_AXES
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Cross-covariance scores for every layer [L, E, k], and per layer the variance ratios
    and, for both geometries, the split-half replication of the first two axes."""
    n_l = a.shape[0]
    per_layer = [cross_covariance_axes(a[layer], b[layer], k) for layer in range(n_l)]
    width = min(s.shape[1] for s, _, _ in per_layer)
    scores = torch.stack([s[:, :width] for s, _, _ in per_layer]).float()
    replication: dict[str, list[list[float]]] = {"pca": [], "split-half": []}
    for layer in range(n_l):
        full = ((a[layer] + b[layer]) / 2).double()
        _, _, vt = torch.linalg.svd(full - full.mean(0, keepdim=True), full_matrices=False)
        replication["pca"].append(axis_replication(a[layer], b[layer], vt[:2].T))
        replication["split-half"].append(
            axis_replication(a[layer], b[layer], per_layer[layer][2][:, :2])
        )
    return scores, {
        "ratios": [[round(float(x), 4) for x in r[:width]] for _, r, _ in per_layer],
        "replication": replication,
    }


def story_halves(stories: Sequence[dict[str, Any]]) -> tuple[list[int], str]:
    """Half (0/1) of every story, and how: by topic when every emotion covers the same two or
    more topics (a crossed design: each half then has every emotion on the same topics, so
    topic cancels in each half's centring), else alternately within each emotion."""
    topics_of: dict[str, set[str | None]] = {}
    for s in stories:
        topics_of.setdefault(s["emotion"], set()).add(s.get("topic"))
    sets = list(topics_of.values())
    crossed = len(sets) > 1 and None not in sets[0] and len(sets[0]) >= 2
    crossed = crossed and all(t == sets[0] for t in sets)
    if crossed:
        order = {t: i for i, t in enumerate(sorted(str(t) for t in sets[0]))}
        return [order[str(s["topic"])] % 2 for s in stories], "topics"
    seen: dict[str, int] = {}
    halves = []
    for s in stories:
        k = seen.get(s["emotion"], 0)
        seen[s["emotion"]] = k + 1
        halves.append(k % 2)
    return halves, "alternate"


def heldout_accuracy(
    vectors: torch.Tensor, grand: torch.Tensor, held: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """Top-1/top-5 accuracy per layer of classifying held-out stories by their best vector.

    ``held`` [N, L, d] pooled story activations, scored by cosine with each emotion vector after
    subtracting the training grand mean (which is shared by all emotions).
    """
    top1, top5 = [], []
    for layer in range(vectors.shape[0]):
        x = held[:, layer] - grand[layer]
        scores = cosine_scores(x, vectors[layer])
        top1.append(float(top_k_hits(scores, labels, 1).float().mean()))
        top5.append(float(top_k_hits(scores, labels, 5).float().mean()))
    return {"top1": top1, "top5": top5}


@dataclass
class PartialSums:
    """What a pass over a corpus (or one shard of it) leaves behind: float64 sums that add up
    across shards, so that vectors merged from shards equal a single process's.

    ``held`` holds the pooled held-out stories (float32, as the model gives them) with their
    corpus indices and emotion indices; ``story_scatter`` is kept only when the method needs
    the within-emotion covariance, and ``scatter``/``total`` only with neutral texts.
    """

    layers: list[int]
    emotions: list[str]
    settings: dict[str, Any]
    corpus: dict[str, Any]
    model: dict[str, Any]
    split: str
    sums: torch.Tensor  # [L, E, d] float64, training stories
    counts: torch.Tensor  # [E]
    half_sums: torch.Tensor  # [2, L, E, d], all stories by half
    half_counts: torch.Tensor  # [2, E]
    held: torch.Tensor  # [H, L, d] float32
    held_ids: list[int]
    held_labels: list[int]
    story_scatter: torch.Tensor | None  # [L, d, d] training stories, or None
    scatter: torch.Tensor  # [L, d, d] neutral texts
    total: torch.Tensor  # [L, d]
    n_neutral: int
    norm_sum: torch.Tensor  # [L] float64
    norm_count: int
    tokens: int
    padded_tokens: int
    cached_texts: int
    shard: tuple[int, int] = (0, 1)


def shard_indices(n: int, shard: tuple[int, int]) -> list[int]:
    """The texts of shard ``i`` of ``N``: every N-th from the i-th (balanced across emotions)."""
    i, count = shard
    if not (isinstance(i, int) and isinstance(count, int) and 0 <= i < count):
        raise InputError(f"shard must be i/N with 0 <= i < N, got {i}/{count}")
    return list(range(i, n, count))


def _settings_for(
    corpus: Corpus, settings: ExtractionSettings | None, overrides: dict[str, Any]
) -> ExtractionSettings:
    settings = replace(settings) if settings is not None else ExtractionSettings()
    for key, value in overrides.items():  # on a copy: the caller's settings stay as they were
        if not hasattr(settings, key):
            raise TypeError(f"unknown extraction setting {key!r}")
        setattr(settings, key, value)
    settings.check()
    if not corpus.stories:
        raise InputError("the corpus has no stories")
    if len(corpus.emotions) < 2:
        raise InputError(
            "the corpus has stories of one emotion only: vectors are differences from the mean "
            "over emotions, so at least two emotions are needed"
        )
    if settings.denoise == "neutral-stories" and not corpus.neutral_stories:
        raise InputError(
            f"the corpus {corpus.source!r} has no neutral stories (neutral_stories.jsonl): "
            "choose another denoising method (dialogues, within, none)"
        )
    return settings


def accumulate(
    lm: LanguageModel,
    corpus: Corpus | str = CURATED,
    settings: ExtractionSettings | None = None,
    progress: bool = False,
    cache: PooledCache | str | bool | None = True,
    shard: tuple[int, int] = (0, 1),
    **overrides: Any,
) -> PartialSums:
    """Run the model over a corpus (or shard ``(i, N)`` of its stories and neutral texts)
    and return the sums :func:`finish` turns into vectors; see :func:`extract`."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    settings = _settings_for(corpus, settings, overrides)
    layers = list(range(lm.n_layers)) if settings.layers is None else sorted(set(settings.layers))
    for layer in layers:
        if not 0 <= layer < lm.n_layers:
            raise InputError(
                f"layer {layer} out of range: {lm.name} has layers 0..{lm.n_layers - 1}"
            )
    settings.layers = layers
    emotions = corpus.emotions
    index = {e: i for i, e in enumerate(emotions)}
    n_l, n_e, d = len(layers), len(emotions), lm.d_model

    # Hold out every k-th story of each emotion (deterministic, by order within the emotion).
    seen: dict[str, int] = {}
    held_mask = []
    for story in corpus.stories:
        k = seen.get(story["emotion"], 0)
        seen[story["emotion"]] = k + 1
        held_mask.append(bool(settings.holdout_every) and k % settings.holdout_every == 0)
    half_of, split = story_halves(corpus.stories)
    mine = shard_indices(len(corpus.stories), shard)
    held_ids = [i for i in mine if held_mask[i]]
    held_row = {i: r for r, i in enumerate(held_ids)}

    if cache is True:
        cache = PooledCache.for_model(lm)
    elif isinstance(cache, (str, os.PathLike)):
        cache = PooledCache.for_model(lm, root=cache)
    passer = PooledPass(
        lm, layers, settings, cache=cache if isinstance(cache, PooledCache) else None
    )
    settings = passer.settings  # with the batch size it resolved, as the vector file records
    story_ids = passer.tokenize([corpus.stories[i]["text"] for i in mine])
    denoising = settings.denoise if settings.neutral_variance > 0 else "none"
    neutral_texts = {
        "dialogues": corpus.neutral_texts(),
        "neutral-stories": [r["text"] for r in corpus.neutral_stories],
    }.get(denoising, [])
    neutral_texts = [neutral_texts[i] for i in shard_indices(len(neutral_texts), shard)]
    neutral_ids = passer.tokenize(neutral_texts)
    total_tokens = sum(map(len, story_ids)) + sum(map(len, neutral_ids))
    needs_within = settings.reader == "whitened" or denoising == "within"

    sums = torch.zeros(n_l, n_e, d, dtype=torch.float64)
    counts = torch.zeros(n_e, dtype=torch.float64)
    half_sums = torch.zeros(2, n_l, n_e, d, dtype=torch.float64)
    half_counts = torch.zeros(2, n_e, dtype=torch.float64)
    held = torch.zeros(len(held_ids), n_l, d)
    scatter = torch.zeros(n_l, d, d, dtype=torch.float64)
    total = torch.zeros(n_l, d, dtype=torch.float64)
    story_scatter = torch.zeros(n_l, d, d, dtype=torch.float64) if needs_within else None

    from emovec.progress import token_progress

    with token_progress(total_tokens, "extracting", enabled=progress) as advance:
        for batch, pooled in passer.run(story_ids, advance):
            x = pooled.double()
            ids = [mine[r] for r in batch]  # corpus indices of this batch's stories
            for h in (0, 1):
                rows = [r for r, i in enumerate(ids) if half_of[i] == h]
                labels = torch.tensor([index[corpus.stories[ids[r]]["emotion"]] for r in rows])
                if rows:
                    half_sums[h].index_add_(1, labels, x[:, rows])
                    half_counts[h].index_add_(0, labels, torch.ones(len(rows), dtype=x.dtype))
            train = [r for r, i in enumerate(ids) if not held_mask[i]]
            labels = torch.tensor([index[corpus.stories[ids[r]]["emotion"]] for r in train])
            if train:
                sums.index_add_(1, labels, x[:, train])
                counts.index_add_(0, labels, torch.ones(len(train), dtype=torch.float64))
                if story_scatter is not None:
                    t = x[:, train]
                    story_scatter += torch.einsum("lbi,lbj->lij", t, t)
            for r, i in enumerate(ids):
                if held_mask[i]:
                    held[held_row[i]] = pooled[:, r]
        for _, pooled in passer.run(neutral_ids, advance):
            x = pooled.double()
            scatter += torch.einsum("lbi,lbj->lij", x, x)
            total += x.sum(dim=1)

    return PartialSums(
        layers=layers,
        emotions=list(emotions),
        settings=asdict(settings),
        corpus={
            "source": corpus.source,
            "hash": corpus.hash,
            "n_stories": len(corpus.stories),
            "n_neutral": len(corpus.neutral),
            "n_neutral_stories": len(corpus.neutral_stories),
        },
        model=lm.identity(),
        split=split,
        sums=sums,
        counts=counts,
        half_sums=half_sums,
        half_counts=half_counts,
        held=held,
        held_ids=held_ids,
        held_labels=[index[corpus.stories[i]["emotion"]] for i in held_ids],
        story_scatter=story_scatter,
        scatter=scatter,
        total=total,
        n_neutral=len(neutral_ids),
        norm_sum=passer.norm_sum.clone(),
        norm_count=passer.norm_count,
        tokens=passer.tokens,
        padded_tokens=passer.padded_tokens,
        cached_texts=passer.cached_texts,
        shard=shard,
    )


def finish(partial: PartialSums) -> EmotionVectors:
    """Vectors, reading directions, held-out accuracy, reliability and geometry from the sums
    of a whole corpus (one :func:`accumulate` pass, or shards merged in order)."""
    settings = ExtractionSettings(**partial.settings)
    layers = partial.layers
    n_l, n_e = len(layers), len(partial.emotions)
    n_model_layers = int(partial.model["n_layers"])
    sums, counts = partial.sums.clone(), partial.counts.clone()
    story_scatter = None if partial.story_scatter is None else partial.story_scatter.clone()
    scatter, total, half_sums, half_counts = (
        partial.scatter,
        partial.total,
        partial.half_sums,
        partial.half_counts,
    )
    denoising = settings.denoise if settings.neutral_variance > 0 else "none"

    def method_bases(within: torch.Tensor | None) -> list[torch.Tensor]:
        if denoising == "within" and within is not None:
            return [
                top_components(within[layer], settings.neutral_variance) for layer in range(n_l)
            ]
        return neutral_components(scatter, total, partial.n_neutral, settings.neutral_variance)

    def whitening(within: torch.Tensor | None) -> torch.Tensor | None:
        return within if settings.reader == "whitened" else None

    metrics: dict[str, Any] = {
        "tokens": partial.tokens,
        "padding_waste": round(1 - partial.tokens / max(partial.padded_tokens, 1), 4),
        "cached_texts": partial.cached_texts,
    }
    default_layer = min(layers, key=lambda layer: abs(layer - (n_model_layers - 1) * 2 / 3))
    steer_layer = min(layers, key=lambda layer: abs(layer - n_model_layers * 0.4))
    if partial.held_ids:
        if (counts == 0).any():
            raise InputError("holdout_every leaves some emotion without training stories")
        train_within = (
            within_covariance(story_scatter, sums, counts) if story_scatter is not None else None
        )
        trained = build_directions(
            sums, counts, method_bases(train_within), whitening(train_within), settings.shrinkage
        )
        labels = torch.tensor(partial.held_labels)
        acc = heldout_accuracy(trained.for_reading, trained.grand, partial.held, labels)
        acc["layers"] = layers
        acc["n_heldout"] = len(partial.held_ids)
        acc["chance_top1"] = 1 / n_e
        metrics["heldout"] = acc
        best = max(range(n_l), key=lambda i: (acc["top1"][i], acc["top5"][i]))
        default_layer = layers[best]
        h = partial.held.transpose(0, 1).double()
        sums.index_add_(1, labels, h)
        counts.index_add_(0, labels, torch.ones(len(partial.held_ids), dtype=torch.float64))
        if story_scatter is not None:
            story_scatter += torch.einsum("lbi,lbj->lij", h, h)
    within = within_covariance(story_scatter, sums, counts) if story_scatter is not None else None
    bases = method_bases(within)
    metrics["neutral_components"] = [int(b.shape[1]) for b in bases]
    built = build_directions(sums, counts, bases, whitening(within), settings.shrinkage)
    geometry_scores = None
    if (half_counts > 0).all(dim=0).sum() >= 2:
        a, b, both = half_directions(
            half_sums, half_counts, bases, whitening(within), settings.shrinkage
        )
        metrics["reliability"] = {
            "layers": layers,
            "split": partial.split,
            **split_half_reliability(a, b),
        }
        if bool(both.all()) and n_e >= 3:
            geometry_scores, metrics["geometry"] = split_half_geometry(a, b)
            metrics["geometry"]["layers"] = layers
    if settings.geometry == "split-half" and geometry_scores is None:
        # Needs at least 3 emotions with stories of each in both halves (2+ stories per
        # emotion, or 2+ shared topics): the file records what it could do.
        settings = replace(settings, geometry="pca")
        metrics["geometry_fallback"] = (
            "split-half geometry needs stories of every emotion in both halves; used pca"
        )
    return EmotionVectors(
        vectors=built.vectors,
        emotions=list(partial.emotions),
        layers=layers,
        default_layer=default_layer,
        model=partial.model,
        residual_norm=(partial.norm_sum / max(partial.norm_count, 1)).float(),
        mean_activation=built.grand,
        params=asdict(settings) | {"layers": layers, "pooling": "mean", "unit": True},
        readers=built.readers,
        geometry_scores=geometry_scores if settings.geometry == "split-half" else None,
        corpus=dict(partial.corpus),
        metrics=metrics,
        steer_layer=steer_layer,
    )


def extract(
    lm: LanguageModel,
    corpus: Corpus | str = CURATED,
    settings: ExtractionSettings | None = None,
    progress: bool = False,
    cache: PooledCache | str | bool | None = True,
    **overrides: Any,
) -> EmotionVectors:
    """Build emotion vectors for ``lm`` from ``corpus`` (see the module docstring for the method).

    With ``holdout_every=k`` every k-th story of each emotion is first held out: vectors built
    without them are scored on them per layer (``metrics['heldout']``), the best layer becomes
    the default, and the final vectors then use all stories. Without a hold-out the default
    layer is the study's two-thirds depth. Steering defaults to 40% depth (see
    :attr:`EmotionVectors.steer_layer`).

    ``cache`` keeps every text's pooled means (``True``, the default as in the CLI: under
    ``$EMOVEC_CACHE/pooled``; a folder or :class:`PooledCache`: there; ``False`` or ``None``:
    off), so re-extracting with other method settings, a subset or a grown corpus runs the
    model only on texts it has not seen. To spread the work over processes or machines, run
    :func:`accumulate` per shard and merge (:mod:`emovec.sharding`).
    """
    return finish(accumulate(lm, corpus, settings, progress, cache, **overrides))
