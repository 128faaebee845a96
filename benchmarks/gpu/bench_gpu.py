"""emovec on a GPU: extraction throughput, generation overhead, compile, host syncs; one run.

Models are randomly initialised from configs of real shapes (nothing is downloaded; speed
does not depend on the weights' values): a Llama-3.1-8B shape and a Qwen2-1.5B shape in
bfloat16. Token ids are fed directly (a local word-level tokenizer maps ``t<id>`` words to
ids), and emotion vectors are random unit directions of the right shape.

1. **extraction** (tokens/s over random-id texts of mixed length, right-padded length
   buckets): the floor (a bare backbone pass stopping after the deepest read layer, the best
   of a few batch sizes), emovec's :class:`~emovec.extraction.PooledPass`, transformers'
   ``output_hidden_states`` and steering-vectors' ``record_activations`` (when importable),
   at two-thirds depth and at all layers; ratios to the floor and to the best peer, and peak
   GPU memory (``torch.cuda.max_memory_allocated``; null on a CPU).
2. **generation** at batch 1 and 32 (128 new tokens): plain, steered
   (:func:`emovec.steering.steer`) and live-monitored (:class:`emovec.monitor.LiveMonitor`
   with 6 and 171 emotions), interleaved repeats; overhead = each run against the mean of
   the plain runs either side of it, with a bootstrap 95% interval over repeats.
3. **compile**: does steering (and monitoring) still take effect under ``torch.compile`` and
   with a static KV cache (``cache_implementation="static"``, which transformers compiles
   with CUDA graphs on a GPU)? Each check records works / ignored / error and the error text.
4. **host syncs per decode step**: calls that read a device tensor on the host (``item``,
   ``tolist``, ``numpy``, ``cpu``, ``bool``/``int``/``float``), counted by wrapping those
   methods, as the difference between a long and a short generation per extra step; on CUDA
   also the warnings of ``torch.cuda.set_sync_debug_mode("warn")``.

On a machine without CUDA (or with ``--toy``) every model is tiny (2-4 layers, width
64-128) and sizes shrink, so the whole run takes well under a minute on a CPU; the figures
then only prove the script, not the speed.

    python benchmarks/gpu/bench_gpu.py --json gpu.json --md gpu.md [--toy] [--budget-s 450]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec.catalog import emotions as all_emotions
from emovec.extraction import (
    ExtractionSettings,
    PooledPass,
    _batches,
    pooling_weights,
    right_padded,
)
from emovec.hooks import StopForward, backbone, stopping_after
from emovec.models import LanguageModel
from emovec.monitor import LiveMonitor, calibrate
from emovec.steering import generate, steer
from emovec.vectors import EmotionVectors

#: Real shapes (transformers config fields). Weights are random: speed does not depend on them.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3.1-8b": {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "qwen2-1.5b": {
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
}
#: Tiny stand-ins with the same architectures, for CPUs and the test suite.
TOY_SHAPES: dict[str, dict[str, Any]] = {
    "llama-toy": {
        "model_type": "llama",
        "num_hidden_layers": 4,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
    "qwen2-toy": {
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
}
#: The compile checks run on a shallow model of the first shape's width: whether hooks take
#: effect does not depend on depth, and compiling 2 blocks takes seconds, not minutes.
COMPILE_LAYERS = 2

#: What ``run_model`` measures on each model (``--parts``).
PARTS = ("extraction", "syncs", "generation")
#: Special token ids of the local tokenizer (every other id is the word ``t<id>``).
UNK, PAD, EOS, BOS = 0, 1, 2, 3
SIX = ["desperate", "afraid", "angry", "sad", "calm", "happy"]
GIB = 1024**3


# -- set-up -----------------------------------------------------------------------------------


def local_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer where the word ``t<id>`` is token ``id`` (ids 0-3 are the
    special tokens): no download needed, and texts of chosen token ids go through emovec's
    text-based APIs unchanged."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # transformers versions that dropped the old name
        from transformers import TokenizersBackend as PreTrainedTokenizerFast

    special = {"<unk>": UNK, "<pad>": PAD, "</s>": EOS, "<s>": BOS}
    vocab = special | {f"t{i}": i for i in range(len(special), vocab_size)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
    )


def build_lm(name: str, shape: dict[str, Any], device: torch.device, dtype) -> LanguageModel:
    """A randomly initialised model of ``shape`` on ``device``, wrapped as emovec's model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in shape.items() if k != "model_type"}
    config = AutoConfig.for_model(
        shape["model_type"], **fields, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS
    )
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # older transformers spell it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model = model.to(device, dtype).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return LanguageModel(model, local_tokenizer(shape["vocab_size"]), name, source="from_config")


def random_ids(rng: np.random.Generator, vocab: int, lengths: list[int]) -> list[list[int]]:
    return [rng.integers(4, vocab, size=n).tolist() for n in lengths]


def as_text(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def random_vectors(lm: LanguageModel, layer: int, norm: float) -> EmotionVectors:
    """171 random unit directions at one layer (reading and steering layer)."""
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(1, 171, lm.d_model, generator=gen)
    return EmotionVectors(
        vectors=torch.nn.functional.normalize(directions, dim=-1),
        emotions=all_emotions(),
        layers=[layer],
        default_layer=layer,
        model=lm.identity(),
        residual_norm=torch.tensor([norm]),
        mean_activation=torch.zeros(1, lm.d_model),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Budget:
    """Wall-clock budget: sections that would not fit are skipped and say so."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


# -- host reads -------------------------------------------------------------------------------

#: Tensor methods that read a tensor's values on the host: on a GPU, each waits for the device.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counting_host_reads(device: torch.device) -> Iterator[Counter]:
    """Count host reads of tensors on ``device`` (by method) while the block runs.

    On a CPU nothing actually waits, but the same calls would each be a sync on a GPU, so the
    count is what the code would cost there.
    """
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str, original: Callable) -> Callable:
        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.device.type == device.type:
                counts[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def counting_cuda_syncs(device: torch.device) -> Iterator[list]:
    """CUDA only: the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` (else empty)."""
    if device.type != "cuda":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


# -- extraction -------------------------------------------------------------------------------


def floor_pass(lm: LanguageModel, ids: list[list[int]], batch_size: int, deepest: int) -> None:
    """Bare backbone passes (no hooks, no LM head) over emovec's batches, stopping after
    ``deepest``: what no extraction can beat."""
    body, device = backbone(lm.model), lm.device
    with torch.no_grad(), stopping_after(lm.layers, deepest):
        for batch in _batches([len(x) for x in ids], batch_size):
            input_ids, mask = right_padded([ids[i] for i in batch], PAD)
            with contextlib.suppress(StopForward):
                body(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    use_cache=False,
                )
    sync(device)


def pool_on_device(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a careful peer user writes: padding excluded, mean from the 50th token."""
    weights = pooling_weights(mask.sum(1).cpu(), mask.shape[1], 50).to(hidden.device)
    return torch.bmm(weights.unsqueeze(1), hidden.float()).squeeze(1)


class PerLayerCopyPass(PooledPass):
    """emovec's pass with one host copy per layer and batch, as it was before pooling stayed
    on the device: each copy waits for the GPU, so the host cannot queue the next blocks."""

    def _capture(self, layer: int, hidden: torch.Tensor, offset: int) -> None:
        super()._capture(layer, hidden, offset)
        batch = getattr(self._active, "batch", None)
        if batch is not None:
            row = batch["rows"][layer]
            batch["pooled"][row].cpu()
            batch["norm_sums"][row].cpu()


def extraction_contenders(
    lm: LanguageModel, ids: list[list[int]], layers: list[int], batch_size: int, before: bool
) -> dict[str, Callable[[], torch.Tensor | None]]:
    n, d, device = len(ids), lm.d_model, lm.device

    def run_pass(cls: type[PooledPass]) -> torch.Tensor:
        out = torch.empty(n, len(layers), d)
        passer = cls(lm, layers, ExtractionSettings(batch_size=batch_size))
        for batch, pooled in passer.run(ids):
            out[batch] = pooled.transpose(0, 1)
        sync(device)
        return out

    def padded() -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for batch in _batches([len(x) for x in ids], batch_size):
            input_ids, mask = right_padded([ids[i] for i in batch], PAD)
            yield batch, input_ids.to(device), mask.to(device)

    def hidden_states() -> torch.Tensor:
        out = torch.empty(n, len(layers), d)
        with torch.no_grad():
            for batch, input_ids, mask in padded():
                hs = lm.model(
                    input_ids=input_ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states
                out[batch] = torch.stack(
                    [pool_on_device(hs[layer + 1], mask) for layer in layers], 1
                ).cpu()
        sync(device)
        return out

    contenders: dict[str, Callable[[], torch.Tensor | None]] = {
        "emovec": lambda: run_pass(PooledPass),
    }
    if before:
        contenders["emovec, host copy per layer (before)"] = lambda: run_pass(PerLayerCopyPass)
    contenders["transformers output_hidden_states"] = hidden_states
    if importlib.util.find_spec("steering_vectors"):
        from steering_vectors import record_activations

        def steering_vectors() -> torch.Tensor:
            out = torch.empty(n, len(layers), d)
            with torch.no_grad():
                for batch, input_ids, mask in padded():
                    with record_activations(lm.model, layer_nums=layers) as rec:
                        lm.model(input_ids=input_ids, attention_mask=mask)
                    out[batch] = torch.stack(
                        [pool_on_device(rec[layer][0], mask) for layer in layers], 1
                    ).cpu()
            sync(device)
            return out

        contenders["steering-vectors record_activations"] = steering_vectors
    return contenders


def peak_memory(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float | None, float]:
    """Run ``fn`` once; (result, peak GiB allocated, seconds). Peak is None off CUDA."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return result, peak, seconds


def bench_extraction(lm: LanguageModel, ids: list[list[int]], sizes: dict[str, Any]) -> dict:
    """Every contender on the same texts, rounds interleaved, median time per contender."""
    device, n_layers = lm.device, lm.n_layers
    tokens = sum(map(len, ids))
    two_thirds = round((n_layers - 1) * 2 / 3)
    settings = {
        f"layer {two_thirds} (2/3 depth)": [two_thirds],
        f"all {n_layers} layers": list(range(n_layers)),
    }
    out: dict[str, Any] = {
        "texts": len(ids),
        "tokens": tokens,
        "batch_size": sizes["batch"],
        "floor_batch_sizes": sizes["floor_batches"],
        "rounds": sizes["rounds"],
        "weights_gib": round(torch.cuda.memory_allocated(device) / GIB, 3)
        if device.type == "cuda"
        else None,
        "settings": {},
    }
    if not importlib.util.find_spec("steering_vectors"):
        out["note"] = "steering-vectors is not installed here: its row is left out"
    for label, layers in settings.items():
        deepest = max(layers)
        floors = {
            bs: (lambda bs=bs, deepest=deepest: floor_pass(lm, ids, bs, deepest))
            for bs in sizes["floor_batches"]
        }
        for fn in floors.values():  # warm-up
            fn()
        floor_times = {bs: [] for bs in floors}
        for _ in range(sizes["rounds"]):
            for bs, fn in floors.items():
                start = time.perf_counter()
                fn()
                floor_times[bs].append(time.perf_counter() - start)
        best_bs = min(floor_times, key=lambda bs: statistics.median(floor_times[bs]))
        contenders = extraction_contenders(
            lm, ids, layers, sizes["batch"], before=len(layers) > 1 and device.type == "cuda"
        )
        _, floor_peak, _ = peak_memory(device, floors[best_bs])
        peaks, means = {"floor": floor_peak}, {}
        for name, fn in contenders.items():  # warm-up, memory and the means
            means[name], peaks[name], _ = peak_memory(device, fn)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(sizes["rounds"]):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {"floor": statistics.median(floor_times[best_bs])}
        med |= {name: statistics.median(t) for name, t in times.items()}
        peers = [k for k in med if k not in ("floor",) and not k.startswith("emovec")]
        best_peer = min(peers, key=med.get) if peers else None
        # hidden_states' last entry is after the final norm: compare the blocks below it.
        below = [j for j, layer in enumerate(layers) if layer < n_layers - 1]
        reference = means.get("transformers output_hidden_states")
        rows = []
        for name, seconds in med.items():
            error = None
            if reference is not None and name in means and below:
                ref = reference[:, below]
                diff = (means[name][:, below] - ref).norm(dim=-1) / ref.norm(dim=-1)
                error = float(diff.max())
            rows.append(
                {
                    "name": name if name != "floor" else f"floor (batch {best_bs})",
                    "tokens_per_s": round(tokens / seconds, 1),
                    "seconds": round(seconds, 4),
                    "vs_floor": round(med["floor"] / seconds, 3),
                    "vs_best_peer": round(med[best_peer] / seconds, 3) if best_peer else None,
                    "peak_gib": None if peaks.get(name) is None else round(peaks[name], 3),
                    "max_rel_diff_vs_hidden_states": error,
                }
            )
        out["settings"][label] = {
            "layers": len(layers),
            "floor_tokens_per_s_by_batch": {
                str(bs): round(tokens / statistics.median(t), 1) for bs, t in floor_times.items()
            },
            "best_peer": best_peer,
            "rows": rows,
        }
    return out


# -- generation -------------------------------------------------------------------------------


def bootstrap_ci(ratios: list[float], draws: int = 5000) -> tuple[float, float]:
    """95% interval of the mean of per-repeat ratios (resampling repeats)."""
    values = np.asarray(ratios, dtype=np.float64)
    rng = np.random.default_rng(0)
    means = rng.choice(values, size=(draws, len(values))).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def generation_variants(
    lm: LanguageModel, vectors: EmotionVectors, monitors: dict[str, LiveMonitor], prompts, n: int
) -> dict[str, Callable[[int], Any]]:
    """Each variant as fn(new tokens): plain, steered, monitored (one per monitor)."""
    fixed = {"chat": False}

    def plain(k: int) -> Any:
        return generate(lm, prompts, max_new_tokens=k, min_new_tokens=k, **fixed)

    def steered(k: int) -> Any:
        with steer(lm, vectors, {"happy": 0.5}):
            return generate(lm, prompts, max_new_tokens=k, min_new_tokens=k, **fixed)

    variants: dict[str, Callable[[int], Any]] = {"plain": plain, "steered (happy 0.5)": steered}
    for label, live in monitors.items():
        variants[label] = lambda k, live=live: live.generate(
            prompts, max_new_tokens=k, min_new_tokens=k, **fixed
        )
    return variants


def bench_generation(
    lm: LanguageModel,
    vectors: EmotionVectors,
    monitors: dict[str, LiveMonitor],
    batch: int,
    sizes: dict[str, Any],
    rng: np.random.Generator,
) -> dict:
    """Interleaved repeats: plain, steered, monitored..., plain, ... (each run sits between two
    plain runs, so a slow drift hits both sides of every ratio).

    Monitored runs also report the share of their time the monitor timed itself spending
    (``MonitoredReply.monitor_seconds``): a within-run figure that the run-to-run noise of
    a host-bound decode loop does not blur.
    """
    n, device = sizes["new_tokens"], lm.device
    prompts = [as_text(x) for x in random_ids(rng, vocab(lm), [sizes["prompt"]] * batch)]
    variants = generation_variants(lm, vectors, monitors, prompts, n)
    variants["plain"](n)  # warm-up at full length: the first long run pays for allocations
    for fn in variants.values():
        fn(4)
    sync(device)
    others = [k for k in variants if k != "plain"]
    schedule = [x for _ in range(sizes["reps"]) for x in ("plain", *others)] + ["plain"]
    seconds: list[float] = []
    shares: dict[str, list[float]] = {k: [] for k in monitors}
    for name in schedule:
        sync(device)
        start = time.perf_counter()
        out = variants[name](n)
        sync(device)
        seconds.append(time.perf_counter() - start)
        if name in shares:
            shares[name].append(out[0].monitor_seconds / out[0].seconds)
    times: dict[str, list[float]] = {k: [] for k in variants}
    ratios: dict[str, list[float]] = {k: [] for k in others}
    block = len(others) + 1
    for i, name in enumerate(schedule):
        times[name].append(seconds[i])
        if name != "plain":
            first = (i // block) * block  # the plain run opening this repeat
            ratios[name].append(seconds[i] / (0.5 * (seconds[first] + seconds[first + block])))
    rows = []
    for name, runs in times.items():
        med = statistics.median(runs)
        row: dict[str, Any] = {
            "variant": name,
            "tokens_per_s": round(batch * n / med, 2),
            "seconds_median": round(med, 4),
        }
        row["runs_s"] = [round(x, 4) for x in runs]
        if name != "plain":
            low, high = bootstrap_ci(ratios[name])
            row |= {
                "overhead": round(statistics.fmean(ratios[name]) - 1, 4),
                "overhead_ci95": [round(low - 1, 4), round(high - 1, 4)],
            }
        if name in shares:
            row["monitor_self_timed_share"] = round(statistics.median(shares[name]), 4)
        rows.append(row)
    return {"batch": batch, "new_tokens": n, "prompt_tokens": sizes["prompt"], "rows": rows}


def vocab(lm: LanguageModel) -> int:
    return int(lm.model.config.get_text_config().vocab_size)


def count_syncs(
    lm: LanguageModel,
    vectors: EmotionVectors,
    monitors: dict[str, LiveMonitor],
    batch: int,
    rng: np.random.Generator,
    short: int = 4,
    long: int = 12,
) -> dict:
    """Host reads (and CUDA sync warnings) per decode step: (long run - short run) / steps."""
    prompts = [as_text(x) for x in random_ids(rng, vocab(lm), [16] * batch)]
    variants = generation_variants(lm, vectors, monitors, prompts, long)
    out: dict[str, Any] = {"batch": batch, "per_step": {}, "by_method": {}}
    if lm.device.type == "cuda":
        out["cuda_sync_warnings_per_step"] = {}
    for name, fn in variants.items():
        fn(short)  # warm-up
        totals, warned, methods = [], [], []
        for k in (short, long):
            with counting_host_reads(lm.device) as counts, counting_cuda_syncs(lm.device) as caught:
                fn(k)
            totals.append(sum(counts.values()))
            methods.append(counts)
            warned.append(sum("synchroniz" in str(w.message) for w in caught))
        steps = long - short
        out["per_step"][name] = round((totals[1] - totals[0]) / steps, 3)
        out["by_method"][name] = {
            m: round((methods[1][m] - methods[0][m]) / steps, 3)
            for m in sorted(set(methods[0]) | set(methods[1]))
            if methods[1][m] != methods[0][m]
        }
        if "cuda_sync_warnings_per_step" in out:
            out["cuda_sync_warnings_per_step"][name] = round((warned[1] - warned[0]) / steps, 3)
    return out


# -- compile and static cache ------------------------------------------------------------------


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _verdict(
    got: torch.Tensor, expected: torch.Tensor, other: torch.Tensor, failure: str = "ignored"
) -> dict[str, Any]:
    """works: ``got`` is the eager ``expected`` result; ``failure``: it is the ``other`` one
    (plain when steering was expected: the hook was ignored; steered when plain was: stale)."""
    to_expected, to_other = _relative(got, expected), _relative(got, other)
    effect = _relative(expected, other)
    status = "works" if to_expected < 0.25 * effect else failure if to_other < to_expected else "?"
    return {
        "status": status,
        "rel_diff_to_expected": round(to_expected, 5),
        "rel_diff_to_other": round(to_other, 5),
        "steering_effect": round(effect, 5),
    }


def _attempt(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()
    start = time.perf_counter()
    try:
        result = {"name": name, **fn()}
    except Exception as exc:  # recorded, not raised: a failing check is a finding
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result = {"name": name, "status": "error", "error": text[-1500:]}
    result["seconds"] = round(time.perf_counter() - start, 2)
    stats = dynamo.utils.counters
    result["graph_breaks"] = int(sum(stats["graph_break"].values()))
    result["unique_graphs"] = int(stats["stats"].get("unique_graphs", 0))
    dynamo.reset()
    return result


@contextlib.contextmanager
def hook_guards(on: bool) -> Iterator[None]:
    """Compiled code guarded on the modules' hooks (recompiles when they change) or not
    (torch's default: hooks added or removed after compiling go unnoticed)."""
    import torch._dynamo as dynamo

    old = dynamo.config.skip_nnmodule_hook_guards
    dynamo.config.skip_nnmodule_hook_guards = not on
    try:
        yield
    finally:
        dynamo.config.skip_nnmodule_hook_guards = old


def compile_checks(
    lm: LanguageModel, vectors: EmotionVectors, budget: Budget, reserve: float
) -> dict[str, Any]:
    """Whether steering and monitoring still take effect under torch.compile / static cache.

    Each check compiles afresh (dynamo is reset); the order of compiling and hooking is the
    point: a hook that exists when the code is compiled is traced into it, one added later
    is only seen if the compiled code is guarded on hooks.
    """
    from transformers import CompileConfig

    device, model = lm.device, lm.model
    cuda = device.type == "cuda"
    backend = "inductor" if cuda else "eager"  # a CPU check traces with dynamo, no codegen
    strength = {"happy": 4.0}  # large, so that steered and plain are far apart
    ids = torch.tensor(random_ids(np.random.default_rng(1), vocab(lm), [24, 24]), device=device)
    with torch.no_grad():
        plain_logits = model(input_ids=ids).logits[:, -1]
        with steer(lm, vectors, strength):
            steered_logits = model(input_ids=ids).logits[:, -1]

    def compiled_forward(guarded: bool) -> Callable[[], dict[str, Any]]:
        def check() -> dict[str, Any]:
            with hook_guards(guarded), torch.no_grad():
                fwd = torch.compile(model.forward, backend=backend)
                fwd(input_ids=ids)  # compiled without hooks
                with steer(lm, vectors, strength):
                    got = fwd(input_ids=ids).logits[:, -1]
                after = fwd(input_ids=ids).logits[:, -1]
            result = _verdict(got, steered_logits, plain_logits)
            result["plain_after_exit_rel_diff"] = round(_relative(after, plain_logits), 5)
            return result

        return check

    prompts = [as_text(x) for x in random_ids(np.random.default_rng(2), vocab(lm), [24, 24])]
    n = 4  # every decode step may recompile (the hooks see a new cache offset)
    static: dict[str, Any] = {"cache_implementation": "static"}
    if not cuda:  # transformers compiles static-cache decoding on accelerators only
        config = CompileConfig(backend="eager", mode=None)
        config._compile_all_devices = True
        static["compile_config"] = config

    def logits_of(**kwargs: Any) -> torch.Tensor:
        enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **{k: v.to(device) for k, v in enc.items()},
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=PAD,
                **kwargs,
            )
        # The first decode step (step 0 is the prefill) follows the same token in every run.
        return out.logits[1]

    eager: dict[str, torch.Tensor] = {}

    def eager_logits() -> tuple[torch.Tensor, torch.Tensor]:
        if not eager:
            eager["plain"] = logits_of()
            with steer(lm, vectors, strength, positions="generated"):
                eager["steered"] = logits_of()
        return eager["plain"], eager["steered"]

    def static_steer(
        guarded: bool, steer_first: bool, absolute: bool = False
    ) -> Callable[[], dict[str, Any]]:
        def check() -> dict[str, Any]:
            plain, steered = eager_logits()
            # absolute: positions from prompt_length on, so the hook needs the cache's length
            # (a device tensor under a static cache); otherwise the pass's shape decides.
            width = lm.tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
            where = {"prompt_length": int(width)} if absolute else {}
            steering = steer(lm, vectors, strength, positions="generated", **where)
            with hook_guards(guarded):
                if steer_first:  # compiled while steering, then used without
                    with steering:
                        logits_of(**static)
                    return _verdict(logits_of(**static), plain, steered, "stale")
                logits_of(**static)  # compiled without hooks
                with steering:
                    return _verdict(logits_of(**static), steered, plain)

        return check

    def static_monitor(after_plain: bool) -> Callable[[], dict[str, Any]]:
        def check() -> dict[str, Any]:
            live = LiveMonitor(
                lm, vectors, SIX, baseline=_baseline(lm, vectors), hidden=None, rules=()
            )
            kwargs = {"max_new_tokens": n, "min_new_tokens": n, "chat": False}
            reference = live.generate(prompts, **kwargs)
            if after_plain:
                logits_of(**static)  # compiled without the monitor's hooks
            got = live.generate(prompts, **kwargs, **static)
            scored = [len(r.pieces) for r in got]
            first = [
                float(np.abs(a.raw[0] - b.raw[0]).max())
                for a, b in zip(got, reference, strict=True)
                if len(a.raw) and a.token_ids[:1] == b.token_ids[:1]
            ]
            diff = max(first) if first else None
            ok = min(scored) == n and diff is not None and diff < 0.05
            return {
                "status": "works" if ok else "broken",
                "tokens_scored": scored,
                "first_token_score_diff_vs_eager": None if diff is None else round(diff, 5),
            }

        return check

    plan = [  # most telling first: later ones are skipped when time runs short
        ("torch.compile(forward), steer added after compiling", compiled_forward(False)),
        ("static cache + compiled decode, steer added after compiling", static_steer(False, False)),
        (
            "static cache + compiled decode, steer positions >= prompt_length, hooks guarded",
            static_steer(True, False, absolute=True),
        ),
        ("static cache + compiled decode, live monitor (6 emotions)", static_monitor(False)),
        ("same, hooks guarded (skip_nnmodule_hook_guards=False)", compiled_forward(True)),
        ("static cache + compiled decode, live monitor after a plain run", static_monitor(True)),
        (
            "static cache + compiled decode, compiled while steered, then plain",
            static_steer(False, True),
        ),
        (
            "static cache + compiled decode, steer added after, hooks guarded",
            static_steer(True, False),
        ),
    ]
    checks = []
    for name, fn in plan:
        if budget.left() < reserve:
            checks.append({"name": name, "status": "skipped", "error": "time budget"})
            continue
        checks.append(_attempt(name, fn))
    return {"backend": backend, "checks": checks}


# -- driver -----------------------------------------------------------------------------------


def _baseline(lm: LanguageModel, vectors: EmotionVectors) -> Any:
    """A monitor baseline from a few random-id texts (values do not matter for speed)."""
    texts = [as_text(x) for x in random_ids(np.random.default_rng(3), vocab(lm), [48] * 4)]
    return calibrate(lm, vectors, texts=texts, cache=False, batch_size=4)


def measured_norm(lm: LanguageModel, layer: int, ids: list[list[int]]) -> float:
    """Mean residual norm at ``layer`` (emovec's steering unit), from a few texts."""
    passer = PooledPass(lm, [layer], ExtractionSettings(batch_size=4))
    for _ in passer.run(ids[:8]):
        pass
    return float(passer.mean_norm[0])


def sizes_for(toy: bool) -> dict[str, Any]:
    if toy:
        return {
            "texts": 16,
            "lengths": (24, 96),
            "batch": 4,
            "floor_batches": [2, 4, 8],
            "rounds": 2,
            "gen_batches": [1, 4],
            "new_tokens": 16,
            "prompt": 16,
            "reps": 2,
        }
    return {
        "texts": 128,
        "lengths": (64, 384),
        "batch": 32,
        "floor_batches": [16, 32, 64],
        "rounds": 2,
        "gen_batches": [1, 32],
        "new_tokens": 128,
        "prompt": 32,
        "reps": 3,
    }


def run_model(name: str, shape: dict[str, Any], device, dtype, sizes, budget: Budget, emit) -> dict:
    """All measurements on one model; ``emit`` saves partial results after each part."""
    result: dict[str, Any] = {"shape": shape, "skipped": []}
    start = time.perf_counter()
    lm = build_lm(name, shape, device, dtype)
    result["build_seconds"] = round(time.perf_counter() - start, 2)
    rng = np.random.default_rng(0)
    lengths = rng.integers(sizes["lengths"][0], sizes["lengths"][1] + 1, size=sizes["texts"])
    ids = random_ids(rng, vocab(lm), [int(x) for x in lengths])
    layer = round((lm.n_layers - 1) * 2 / 3)
    vectors = random_vectors(lm, layer, measured_norm(lm, layer, ids))
    result["read_and_steer_layer"] = layer
    emit()

    parts = sizes.get("parts", PARTS)
    if "extraction" in parts:
        result["extraction"] = bench_extraction(lm, ids, sizes)
        emit()
    baseline = _baseline(lm, vectors)
    monitors = {
        "monitored, 6 emotions": LiveMonitor(lm, vectors, SIX, baseline=baseline, hidden=None),
        "monitored, 171 emotions": LiveMonitor(lm, vectors, None, baseline=baseline, hidden=None),
    }
    if "syncs" in parts:
        result["syncs"] = [count_syncs(lm, vectors, monitors, b, rng) for b in sizes["gen_batches"]]
        emit()
    result["generation"] = []
    for batch in sizes["gen_batches"] if "generation" in parts else []:
        if budget.left() < sizes.get("gen_reserve_s", 0):
            result["skipped"].append(f"generation at batch {batch}: time budget")
            continue
        result["generation"].append(bench_generation(lm, vectors, monitors, batch, sizes, rng))
        emit()
    del lm, monitors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def gpu_driver() -> str | None:
    """The NVIDIA driver version (from nvidia-smi), or None where it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment(device: torch.device, dtype, toy: bool) -> dict[str, Any]:
    import transformers

    meta: dict[str, Any] = {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dtype": str(dtype).replace("torch.", ""),
        "toy": toy,
        "cpu_threads": torch.get_num_threads(),
        "cuda_runtime": torch.version.cuda,
        "driver": gpu_driver() if device.type == "cuda" else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        from importlib.metadata import version

        import steering_vectors  # noqa: F401

        meta["steering_vectors"] = version("steering-vectors")
    except Exception:
        meta["steering_vectors"] = None
    return meta


# -- report -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (what docs/performance.md shows)."""
    meta = results["meta"]
    lines = [
        f"# emovec GPU benchmark ({'toy models, ' if meta['toy'] else ''}{meta['device']}"
        f"{', ' + meta['gpu'] if meta.get('gpu') else ''})",
        "",
        f"{meta.get('date', '')} torch {meta['torch']} (CUDA {meta.get('cuda_runtime')}, driver "
        f"{meta.get('driver') or '-'}), transformers {meta['transformers']}, {meta['dtype']}, "
        f"steering-vectors {meta.get('steering_vectors') or 'not installed'}; "
        f"{results.get('seconds', '?')} s in all.",
        "",
    ]
    for name, model in results["models"].items():
        lines += [f"## {name}", ""]
        if "error" in model:
            lines += [f"Failed: `{model['error']}`", ""]
        ext = model.get("extraction")
        if ext:
            lines += [
                f"Extraction: {ext['texts']} texts, {ext['tokens']} tokens, batch "
                f"{ext['batch_size']}, median of {ext['rounds']} interleaved rounds.",
                "",
            ]
            for label, setting in ext["settings"].items():
                lines += [
                    f"| {label} | tok/s | x floor | x best peer | peak GiB | max rel. diff |",
                    "|---|---|---|---|---|---|",
                ]
                for row in setting["rows"]:
                    lines.append(
                        f"| {row['name']} | {_fmt(row['tokens_per_s'])} | "
                        f"{_fmt(row['vs_floor'])} | {_fmt(row['vs_best_peer'])} | "
                        f"{_fmt(row['peak_gib'])} | "
                        f"{_fmt(row['max_rel_diff_vs_hidden_states'], 2)} |"
                    )
                lines.append("")
        for gen in model.get("generation", []):
            lines += [
                f"| generation, batch {gen['batch']}, {gen['new_tokens']} new tokens | tok/s "
                "| overhead | 95% interval | monitor's own share |",
                "|---|---|---|---|---|",
            ]
            for row in gen["rows"]:
                ci = row.get("overhead_ci95")
                extra = f"{row['overhead']:+.1%} | {ci[0]:+.1%} to {ci[1]:+.1%}" if ci else "- | -"
                share = row.get("monitor_self_timed_share")
                extra += f" | {share:.2%}" if share is not None else " | -"
                lines.append(f"| {row['variant']} | {_fmt(row['tokens_per_s'])} | {extra} |")
            lines.append("")
        syncs = model.get("syncs") or []
        if syncs:
            cuda = "cuda_sync_warnings_per_step" in syncs[0]
            head = "| host syncs per decode step | " + " | ".join(
                f"batch {s['batch']}" + (" (reads / CUDA warnings)" if cuda else "") for s in syncs
            )
            lines += [head + " |", "|---" * (len(syncs) + 1) + "|"]
            for variant in syncs[0]["per_step"]:
                cells = []
                for s in syncs:
                    cell = _fmt(s["per_step"][variant])
                    if cuda:
                        cell += f" / {_fmt(s['cuda_sync_warnings_per_step'][variant])}"
                    cells.append(cell)
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            lines.append("")
        for note in model.get("skipped", []):
            lines.append(f"Skipped: {note}.")
    comp = results.get("compile")
    if comp:
        lines += [
            f"## Compile and static cache ({comp.get('model', '')}, backend {comp['backend']})",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        for check in comp["checks"]:
            if check["status"] == "error":
                detail = check["error"].splitlines()[-1][:200].replace("|", "\\|")
            else:
                detail = ", ".join(
                    f"{k} {v}"
                    for k, v in check.items()
                    if k not in ("name", "status", "seconds") and not isinstance(v, list)
                )
            lines.append(f"| {check['name']} | {check['status']} | {detail} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def check_finite(results: dict[str, Any]) -> None:
    """Every measured number positive and finite (ratios of a broken run would not be)."""
    for model in results["models"].values():
        for setting in model.get("extraction", {}).get("settings", {}).values():
            for row in setting["rows"]:
                assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0, row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="gpu-bench.json", help="results as JSON")
    parser.add_argument("--md", default="gpu-bench.md", help="results as a markdown table")
    parser.add_argument("--toy", action="store_true", help="tiny models (default off CUDA)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the shapes")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip parts past this")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile checks")
    parser.add_argument("--parts", default=",".join(PARTS), help="per-model parts to run")
    parser.add_argument("--reps", type=int, default=None, help="generation repeats")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    toy = args.toy or device.type != "cuda"
    if device.type == "cpu":
        # Tiny models on shared cores: one thread, or OpenMP's spinning threads dominate.
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = TOY_SHAPES if toy else SHAPES
    if args.models:
        shapes = {k: v for k, v in shapes.items() if k in args.models.split(",")}
    sizes = sizes_for(toy) | {"parts": args.parts.split(",")}
    if args.reps:
        sizes["reps"] = args.reps
    budget = Budget(args.budget_s)
    results: dict[str, Any] = {"meta": environment(device, dtype, toy), "models": {}}
    started = time.perf_counter()

    def emit() -> None:
        results["seconds"] = round(time.perf_counter() - started, 1)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        Path(args.md).write_text(markdown(results))

    for i, (name, shape) in enumerate(shapes.items()):
        if i > 0 and budget.left() < 60:
            results["models"][name] = {"skipped": ["time budget"], "shape": shape}
            continue
        print(f"[{time.perf_counter() - started:6.1f}s] {name}", file=sys.stderr, flush=True)
        sizes_i = {**sizes, "gen_reserve_s": 30 if toy else 60}
        try:
            results["models"][name] = run_model(name, shape, device, dtype, sizes_i, budget, emit)
        except Exception as exc:  # keep what the other models measured
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            results["models"][name] = {"error": text[-1500:], "shape": shape}
            traceback.print_exc()
        emit()
    if not args.no_compile and shapes:
        print(f"[{time.perf_counter() - started:6.1f}s] compile", file=sys.stderr, flush=True)
        first = next(iter(shapes))
        try:
            lm = build_lm(
                f"{first}, {COMPILE_LAYERS} layers",
                {**shapes[first], "num_hidden_layers": COMPILE_LAYERS},
                device,
                dtype,
            )
            layer = lm.n_layers - 1
            rng = np.random.default_rng(4)
            norm = measured_norm(lm, layer, random_ids(rng, vocab(lm), [32] * 8))
            results["compile"] = compile_checks(
                lm, random_vectors(lm, layer, norm), budget, 10 if toy else 40
            )
            results["compile"]["model"] = lm.name
            del lm
        except Exception as exc:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            results["compile"] = {"backend": "-", "checks": [], "error": text[-1500:]}
            traceback.print_exc()
    emit()
    check_finite(results)
    print(Path(args.md).read_text())
    return results


if __name__ == "__main__":
    main()
