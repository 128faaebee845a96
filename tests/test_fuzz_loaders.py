"""Hostile input to the loaders: every file gives a value or exactly one clean error, quickly.

Vector files, monitor traces and corpus folders are built here without a model, then damaged
(byte flips, truncation, spliced bytes, fields of wrong types and values, non-finite numbers,
directories in place of files). Each example must load, or raise the loader's own error
(:class:`VectorFileError`, :class:`MonitorError`, :class:`CorpusError`) and nothing else,
within a time bound. With ``EMOVEC_FUZZ_REPORT`` set, the number of cases tried per loader is
written to ``benchmarks/results/fuzz.json``. The examples are the same on every run; set
``EMOVEC_FUZZ_RANDOM=1`` for new ones and ``EMOVEC_FUZZ_EXAMPLES=N`` for more per test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from emovec import catalog
from emovec.corpus import CorpusError, load_corpus
from emovec.files import AppendLog, DamagedLogWarning, read_log
from emovec.monitor import Baseline, MonitorError, TokenEvent, TraceWriter, read_trace
from emovec.studies import Scenario, StudyError, load_rollouts, load_scenario
from emovec.vectors import EmotionVectors, VectorFileError, _checksum

EMOTIONS = ["happy", "sad", "angry", "afraid", "calm"]
LAYERS = [1, 3, 5]
D_MODEL = 8
#: Seconds one example may take (a hang is stopped by an alarm and fails the test).
TIME_LIMIT_S = 5.0

FUZZ = settings(
    max_examples=int(os.environ.get("EMOVEC_FUZZ_EXAMPLES", "200")),  # more for a deeper run
    deadline=2000,  # ms per example
    database=None,  # nothing written to .hypothesis/examples
    derandomize=not os.environ.get("EMOVEC_FUZZ_RANDOM"),  # CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: loader -> {"cases", "values", "errors", "crashes", "slowest_s"}
COUNTS: dict[str, Counter] = defaultdict(Counter)
SLOWEST: dict[str, float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report():
    yield
    if not os.environ.get("EMOVEC_FUZZ_REPORT"):
        return
    out = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fuzz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        loader: {**dict(counts), "slowest_s": round(SLOWEST[loader], 4)}
        for loader, counts in sorted(COUNTS.items())
    }
    out.write_text(json.dumps(report, indent=1) + "\n")


@contextmanager
def _time_limit(seconds: float):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``."""

    def expire(_signum, _frame):
        raise TimeoutError(f"loader ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def attempt(loader: str, error: type[Exception], load, *args) -> Any:
    """Run one case: the value, or None after exactly the loader's own error."""
    COUNTS[loader].update(cases=1, values=0, errors=0, crashes=0)
    started = time.perf_counter()
    try:
        with _time_limit(TIME_LIMIT_S):
            value = load(*args)
    except error as exc:
        assert type(exc) is error, f"{type(exc).__name__} is a subclass, not {error.__name__}"
        assert str(exc), "an error without a message"
        COUNTS[loader]["errors"] += 1
        return None
    except BaseException:
        COUNTS[loader]["crashes"] += 1
        raise
    finally:
        SLOWEST[loader] = max(SLOWEST[loader], time.perf_counter() - started)
    COUNTS[loader]["values"] += 1
    return value


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ----------------------------------------------------------------------------------------------
# Hostile values
# ----------------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 5, 10**30, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "happy", "HAPPY", "Worn_Out", "hapy", "\ud800", "x" * 2000, "\u2028"]),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=12,
)
#: Lines of text that are not what a JSON-lines reader expects.
BAD_LINES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "[" * 100_000,
            '{"a":' * 50_000,
            "9" * 5000,
            '{"x": 1e999}',
            '{"x": NaN}',
            '{"x": -Infinity}',
            '"\\ud800"',
            "null",
            "[]",
            "{}",
            "\ufeff{}",
        ]
    ),
)


def mutate_bytes(data: bytes, draw) -> bytes:
    """Flip, truncate, splice or delete bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "delete"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    raw = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(raw)
    at = draw(st.integers(0, len(raw)))
    if kind == "splice":
        return bytes(raw[:at]) + draw(st.binary(min_size=1, max_size=32)) + bytes(raw[at:])
    return bytes(raw[:at]) + bytes(raw[at + draw(st.integers(1, 64)) :])


# ----------------------------------------------------------------------------------------------
# Vector files
# ----------------------------------------------------------------------------------------------


def small_vectors(seed: int = 0, readers: bool = True) -> EmotionVectors:
    gen = torch.Generator().manual_seed(seed)
    vec = torch.randn(len(LAYERS), len(EMOTIONS), D_MODEL, generator=gen)
    vec = vec / vec.norm(dim=-1, keepdim=True)
    other = torch.randn(len(LAYERS), len(EMOTIONS), D_MODEL, generator=gen)
    return EmotionVectors(
        vectors=vec,
        emotions=list(EMOTIONS),
        layers=list(LAYERS),
        default_layer=3,
        model={"name": "fuzz", "d_model": D_MODEL, "n_layers": 6, "fingerprint": "0" * 16},
        residual_norm=torch.rand(len(LAYERS), generator=gen) + 0.5,
        mean_activation=torch.randn(len(LAYERS), D_MODEL, generator=gen),
        params={"reader": "whitened"},
        corpus={"name": "fuzz", "hash": "0" * 16},
        metrics={"heldout": {"accuracy": 0.5}},
        steer_layer=1,
        readers=other / other.norm(dim=-1, keepdim=True) if readers else None,
    )


@pytest.fixture(scope="module")
def vector_file(scratch) -> Path:
    return small_vectors().save(scratch / "base.safetensors")


def read_parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["emovec"])  # noqa: SIM118


def write_parts(path: Path, tensors, meta, checksum: bool = True) -> Path:
    meta = dict(meta)
    if checksum:
        meta["checksum"] = _checksum(tensors)
    else:
        meta.pop("checksum", None)
    save_file(tensors, path, metadata={"emovec": json.dumps(meta)})
    return path


def check_loaded(vectors: EmotionVectors) -> None:
    """What a loaded file guarantees, whatever was fed in."""
    n = (len(vectors.layers), len(vectors.emotions), vectors.d_model)
    assert tuple(vectors.vectors.shape) == n and vectors.vectors.dtype == torch.float32
    assert torch.isfinite(vectors.vectors).all()
    assert ((vectors.vectors.double().norm(dim=-1) - 1).abs() <= 1e-3).all()
    assert (vectors.residual_norm > 0).all() and tuple(vectors.residual_norm.shape) == n[:1]
    assert tuple(vectors.mean_activation.shape) == (n[0], n[2])
    assert set(vectors.emotions) <= set(catalog.emotions())
    assert vectors.layers == sorted(set(vectors.layers))
    assert vectors.default_layer in vectors.layers
    assert vectors.default_steer_layer in vectors.layers
    json.dumps(vectors.info())  # plain data throughout
    assert vectors.at().shape == vectors.reading_directions().shape
    assert vectors.norm_at() > 0


@FUZZ
@given(data=st.data())
def test_fuzz_vector_file_bytes(vector_file, scratch, data):
    path = scratch / "bytes.safetensors"
    path.write_bytes(mutate_bytes(vector_file.read_bytes(), data.draw))
    loaded = attempt("vectors", VectorFileError, EmotionVectors.load, path)
    if loaded is not None:
        check_loaded(loaded)


META_FIELDS = [
    "format",
    "emotions",
    "layers",
    "default_layer",
    "steer_layer",
    "d_model",
    "model",
    "params",
    "corpus",
    "metrics",
    "version",
    "checksum",
]


@st.composite
def meta_edit(draw, meta: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads(json.dumps(meta))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*META_FIELDS, "extra"]))
        choice = draw(st.sampled_from(["hostile", "delete", "plausible"]))
        if choice == "delete":
            meta.pop(key, None)
        elif choice == "hostile":
            meta[key] = draw(HOSTILE)
        else:
            meta[key] = draw(
                st.sampled_from(
                    [
                        [],
                        [1, 3, 5],
                        [5, 3, 1],
                        [1, 1, 3],
                        [1, 3, -5],
                        [True, 3, 5],
                        [1.0, 3.0, 5.0],
                        list(EMOTIONS),
                        [*EMOTIONS[:4], "happy"],
                        [*EMOTIONS[:4], "joyish"],
                        list(reversed(EMOTIONS)),
                        ["happy"] * 20_000,
                        list(range(2000)),
                        1,
                        3,
                        5,
                        7,
                        True,
                        3.0,
                        D_MODEL,
                        D_MODEL + 1,
                        0,
                        -D_MODEL,
                        {},
                        "emovec.vectors/1",
                        "emovec.vectors/2",
                    ]
                )
            )
    return meta


@FUZZ
@given(data=st.data())
def test_fuzz_vector_file_metadata(vector_file, scratch, data):
    tensors, meta = read_parts(vector_file)
    meta = data.draw(meta_edit(meta))
    path = scratch / "meta.safetensors"
    if data.draw(st.booleans()):
        save_file(tensors, path, metadata={"emovec": json.dumps(meta)})
    else:  # not even JSON, or JSON of the wrong kind
        raw = data.draw(st.one_of(BAD_LINES, HOSTILE.map(json.dumps)))
        save_file(tensors, path, metadata={"emovec": raw})
    loaded = attempt("vectors", VectorFileError, EmotionVectors.load, path)
    if loaded is not None:
        check_loaded(loaded)


TENSOR_EDITS = [
    "nan",
    "inf",
    "huge",
    "zero_row",
    "scale",
    "dtype",
    "int",
    "shape",
    "drop",
    "extra",
    "negative",
]


@FUZZ
@given(data=st.data())
def test_fuzz_vector_file_tensors(vector_file, scratch, data):
    tensors, meta = read_parts(vector_file)
    name = data.draw(st.sampled_from(["vectors", "residual_norm", "mean_activation", "readers"]))
    edit = data.draw(st.sampled_from(TENSOR_EDITS))
    t = tensors[name].clone()
    flat = t.view(-1)
    at = data.draw(st.integers(0, flat.numel() - 1))
    if edit == "nan":
        flat[at] = math.nan
    elif edit == "inf":
        flat[at] = data.draw(st.sampled_from([math.inf, -math.inf]))
    elif edit == "huge":
        t = t.double()
        t.view(-1)[at] = 1e300
    elif edit == "zero_row":
        t.view(-1, t.shape[-1])[at % t.view(-1, t.shape[-1]).shape[0]] = 0
    elif edit == "scale":
        t = t * data.draw(st.floats(0.5, 2.0))
    elif edit == "dtype":
        t = t.to(data.draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
    elif edit == "int":
        t = t.to(data.draw(st.sampled_from([torch.int32, torch.int8, torch.bool, torch.uint8])))
    elif edit == "shape":
        t = t.reshape(-1)[: data.draw(st.integers(0, flat.numel()))].clone()
    elif edit == "negative":
        t = -t.abs()
    if edit == "drop":
        del tensors[name]
    elif edit == "extra":
        tensors["unexpected"] = torch.zeros(3)
    else:
        tensors[name] = t.contiguous()
    path = write_parts(scratch / "tensors.safetensors", tensors, meta, data.draw(st.booleans()))
    loaded = attempt("vectors", VectorFileError, EmotionVectors.load, path)
    if loaded is not None:
        check_loaded(loaded)


# --- regressions: vector files ---------------------------------------------------------------


def _data_start(raw: bytes) -> int:
    return 8 + struct.unpack("<Q", raw[:8])[0]


def test_round_trip_with_checksum_and_old_files_without_one(vector_file, tmp_path):
    loaded = EmotionVectors.load(vector_file)
    check_loaded(loaded)
    original = small_vectors()
    torch.testing.assert_close(loaded.vectors, original.vectors)
    torch.testing.assert_close(loaded.readers, original.readers)
    assert loaded.steer_layer == 1 and loaded.params == {"reader": "whitened"}
    tensors, meta = read_parts(vector_file)
    assert meta["checksum"].startswith("sha256:")
    old = write_parts(tmp_path / "old.safetensors", tensors, meta, checksum=False)
    check_loaded(EmotionVectors.load(old))
    plain = small_vectors(readers=False).save(tmp_path / "plain.safetensors")
    assert EmotionVectors.load(plain).readers is None


def test_flipped_byte_in_tensor_data_is_refused_by_checksum(vector_file, tmp_path):
    raw = bytearray(vector_file.read_bytes())
    start = _data_start(bytes(raw))
    for offset in (start, (start + len(raw)) // 2, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x01  # a low mantissa bit: still finite, still (nearly) unit
        path = tmp_path / "flipped.safetensors"
        path.write_bytes(bytes(damaged))
        with pytest.raises(VectorFileError, match="checksum mismatch.*emovec extract"):
            EmotionVectors.load(path)


def test_nan_in_residual_norm_is_refused(tmp_path):
    vectors = small_vectors()
    vectors.residual_norm[1] = math.nan
    path = vectors.save(tmp_path / "nan.safetensors")  # checksum written over the NaN
    with pytest.raises(VectorFileError, match="residual_norm contain NaN"):
        EmotionVectors.load(path)
    vectors.residual_norm[1] = 0.0
    with pytest.raises(VectorFileError, match="residual_norm must be positive"):
        EmotionVectors.load(vectors.save(path))


def test_duplicate_emotion_names_are_refused(vector_file, tmp_path):
    tensors, meta = read_parts(vector_file)
    meta["emotions"] = ["happy", "sad", "happy", "afraid", "calm"]
    path = write_parts(tmp_path / "dup.safetensors", tensors, meta)
    with pytest.raises(VectorFileError, match="'emotions' has duplicate"):
        EmotionVectors.load(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("default_layer", True, "'default_layer' must be an integer"),
        ("steer_layer", False, "'steer_layer' must be an integer"),
        ("default_layer", 2, "'default_layer' is 2, which is not among"),
        ("layers", [1, True, 5], "'layers' must hold only integers"),
        ("layers", [5, 3, 1], "'layers' must be sorted"),
        ("layers", [1, 1, 3], "'layers' has duplicate"),
        ("layers", [-1, 3, 5], "'layers' must hold only layer numbers >= 0"),
        ("d_model", 0, "'d_model' must be a positive integer"),
        ("d_model", 8.0, "'d_model' must be a positive integer"),
        ("emotions", ["happy", "sad", "angry", "afraid", "joyish"], "not in the catalog"),
        ("emotions", ["happy", 1, "angry", "afraid", "calm"], "'emotions' must hold only"),
        ("model", "fuzz", "'model' must be a JSON object"),
        ("metrics", [], "'metrics' must be a JSON object"),
        ("format", "emovec.vectors/9", "unsupported format"),
    ],
)
def test_each_metadata_problem_names_its_field(vector_file, tmp_path, key, value, message):
    tensors, meta = read_parts(vector_file)
    meta[key] = value
    path = write_parts(tmp_path / "field.safetensors", tensors, meta)
    with pytest.raises(VectorFileError, match=message):
        EmotionVectors.load(path)


def test_non_unit_and_zero_vectors_are_refused(tmp_path):
    vectors = small_vectors()
    vectors.vectors[0, 0] *= 1.01
    with pytest.raises(VectorFileError, match="not unit vectors"):
        EmotionVectors.load(vectors.save(tmp_path / "long.safetensors"))
    vectors.vectors[0, 0] = 0
    with pytest.raises(VectorFileError, match="all-zero vector"):
        EmotionVectors.load(vectors.save(tmp_path / "zero.safetensors"))


def test_integer_tensors_are_refused(vector_file, tmp_path):
    tensors, meta = read_parts(vector_file)
    tensors["residual_norm"] = torch.ones(len(LAYERS), dtype=torch.int64)
    path = write_parts(tmp_path / "int.safetensors", tensors, meta)
    with pytest.raises(VectorFileError, match="'residual_norm' has type I64"):
        EmotionVectors.load(path)


def test_a_file_claiming_a_million_emotions_is_refused_fast(vector_file, tmp_path):
    tensors, meta = read_parts(vector_file)
    meta["emotions"] = [f"emotion {i}" for i in range(1_000_000)]
    path = write_parts(tmp_path / "million.safetensors", tensors, meta)
    started = time.perf_counter()
    with pytest.raises(VectorFileError, match="1000000 emotions"):
        EmotionVectors.load(path)
    assert time.perf_counter() - started < 2.0
    meta["emotions"] = EMOTIONS
    meta["layers"] = list(range(100_000))
    path = write_parts(tmp_path / "layers.safetensors", tensors, meta)
    started = time.perf_counter()
    with pytest.raises(VectorFileError, match="100000 layers"):
        EmotionVectors.load(path)
    assert time.perf_counter() - started < 2.0


def test_catalog_sized_file_loads_in_linear_time(tmp_path):
    """All 171 emotions: nothing in loading is quadratic in their number."""
    names = catalog.emotions()
    vec = torch.randn(1, len(names), 4)
    vectors = EmotionVectors(
        vec / vec.norm(dim=-1, keepdim=True),
        names,
        [0],
        0,
        {"name": "fuzz"},
        torch.ones(1),
        torch.zeros(1, 4),
    )
    path = vectors.save(tmp_path / "all.safetensors")
    started = time.perf_counter()
    assert EmotionVectors.load(path).emotions == names
    assert time.perf_counter() - started < 1.0


# ----------------------------------------------------------------------------------------------
# Monitor traces
# ----------------------------------------------------------------------------------------------

TRACE_EMOTIONS = ["afraid", "calm", "happy"]
PIECES = ["Hel", "lo", " wörld", " 😀", "\u2028x", "!"]


def write_trace(path: Path) -> Path:
    meta = {
        "emovec": "0",
        "model": "fuzz",
        "fingerprint": "0" * 16,
        "layer": 3,
        "emotions": TRACE_EMOTIONS,
        "baseline": {
            "source": "fuzz",
            "n_tokens": 10,
            "mean": {"afraid": 0.1, "calm": 0.0, "happy": -0.05},
            "std": {"afraid": 0.01, "calm": 0.02, "happy": 0.03},
        },
        "rules": [],
        "hidden": None,
    }
    writer = TraceWriter(path, meta, flush_every_s=3600)
    rng = np.random.default_rng(0)
    for index, piece in enumerate(PIECES):
        for row in (0, 1):
            raw = rng.normal(0, 0.05, len(TRACE_EMOTIONS)).astype(np.float32)
            event = TokenEvent(
                row, index, 20 + index, 100 + index, piece, raw, raw * 10, TRACE_EMOTIONS
            )
            writer.token(event)
    for row in (0, 1):
        writer.write(
            {
                "type": "reply",
                "row": row,
                "prompt": "hi",
                "text": "".join(PIECES),
                "n_tokens": len(PIECES),
                "stopped_by": "length",
                "steering": {},
                "sampling": {"temperature": 0.0, "seed": None},
                "seconds": 0.1,
                "monitor_seconds": 0.01,
                "alerts": [],
                "hidden": [],
            }
        )
    writer.close()
    return path


@pytest.fixture(scope="module")
def trace_file(scratch) -> Path:
    return write_trace(scratch / "base.jsonl")


def check_trace(trace) -> None:
    assert isinstance(trace.meta, dict) and trace.meta["type"] == "meta"
    emotions = trace.meta["emotions"]
    for t in trace.tokens:
        assert isinstance(t["row"], int) and t["row"] >= 0
        assert isinstance(t["index"], int) and t["index"] >= 0
        assert isinstance(t["piece"], str)
        for e in emotions:
            assert math.isfinite(float(t["z"][e])) and math.isfinite(float(t["raw"][e]))
    for r in trace.replies:
        assert isinstance(r["row"], int)
    trace.row(0)
    json.dumps(
        {"meta": trace.meta, "tokens": trace.tokens, "replies": trace.replies}, allow_nan=False
    )


def test_trace_round_trip_without_a_model(trace_file):
    trace = read_trace(trace_file)
    check_trace(trace)
    assert [t["piece"] for t in trace.row(1)] == PIECES
    assert len(trace.replies) == 2 and trace.replies[1]["text"] == "".join(PIECES)


def _complete_records(data: bytes) -> tuple[int, int]:
    """(token records, reply records) whose line is wholly inside ``data`` (newline or not)."""
    tokens = replies = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        try:
            record = json.loads(line)
        except ValueError:
            assert last, "only the last line of a prefix can be cut"
            continue
        tokens += record["type"] == "token"
        replies += record["type"] == "reply"
    return tokens, replies


@FUZZ
@given(data=st.data())
def test_fuzz_trace_truncated_anywhere_reads_up_to_the_cut(trace_file, scratch, data):
    whole = trace_file.read_bytes()
    cut = data.draw(st.integers(0, len(whole)))
    path = scratch / "cut.jsonl"
    path.write_bytes(whole[:cut])
    trace = attempt("trace", MonitorError, read_trace, path)
    header_end = whole.index(b"\n")
    if trace is None:
        assert cut < header_end  # only a cut inside the header loses the trace
        return
    check_trace(trace)
    assert (len(trace.tokens), len(trace.replies)) == _complete_records(whole[:cut])


@FUZZ
@given(data=st.data())
def test_fuzz_trace_bytes(trace_file, scratch, data):
    path = scratch / "bytes.jsonl"
    path.write_bytes(mutate_bytes(trace_file.read_bytes(), data.draw))
    trace = attempt("trace", MonitorError, read_trace, path)
    if trace is not None:
        check_trace(trace)


TOKEN_KEYS = ["type", "row", "index", "position", "token_id", "piece", "raw", "z", "alerts"]
META_KEYS = ["type", "emotions", "baseline", "layer", "model", "rules", "hidden"]
REPLY_KEYS = ["type", "row", "text", "prompt", "alerts", "hidden", "n_tokens", "steering"]


@st.composite
def record_edit(draw, record: dict[str, Any]) -> str:
    """One trace or corpus record, edited: a field set to a hostile value, or removed."""
    record = json.loads(json.dumps(record))
    kind = record.get("type")
    keys = {"meta": META_KEYS, "token": TOKEN_KEYS, "reply": REPLY_KEYS}.get(
        kind if isinstance(kind, str) else "", list(record)
    )
    key = draw(st.sampled_from(keys or ["x"]))
    choice = draw(st.sampled_from(["hostile", "delete", "inner"]))
    if choice == "delete":
        record.pop(key, None)
    elif choice == "inner" and isinstance(record.get(key), dict) and record[key]:
        inner = draw(st.sampled_from(sorted(record[key])))
        if isinstance(record[key][inner], dict) and record[key][inner]:  # baseline mean/std
            deepest = draw(st.sampled_from(sorted(record[key][inner])))
            record[key][inner][deepest] = draw(HOSTILE)
        else:
            record[key][inner] = draw(HOSTILE)
    elif choice == "inner" and isinstance(record.get(key), list) and record[key]:
        record[key][draw(st.integers(0, len(record[key]) - 1))] = draw(HOSTILE)
    else:
        record[key] = draw(HOSTILE)
    return json.dumps(record, ensure_ascii=draw(st.booleans()))


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


@FUZZ
@given(data=st.data())
def test_fuzz_trace_records(trace_file, scratch, data):
    lines = trace_file.read_text("utf-8").split("\n")[:-1]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["edit", "edit", "replace", "duplicate", "move"]))
        if action == "edit" and _is_object(lines[at]):
            lines[at] = data.draw(record_edit(json.loads(lines[at])))
        elif action in ("edit", "replace"):
            lines[at] = data.draw(BAD_LINES).replace("\n", " ")
        elif action == "duplicate":
            lines.insert(at, lines[at])
        else:
            lines.insert(data.draw(st.integers(0, len(lines) - 1)), lines.pop(at))
    path = scratch / "records.jsonl"
    text = "\n".join(lines) + ("\n" if data.draw(st.booleans()) else "")
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # a lone surrogate: not UTF-8
    trace = attempt("trace", MonitorError, read_trace, path)
    if trace is not None:
        check_trace(trace)


# --- regressions: traces ---------------------------------------------------------------------


def test_trace_torn_mid_line_is_read_up_to_the_cut(trace_file, tmp_path):
    whole = trace_file.read_bytes()
    lines = whole.split(b"\n")
    cut = len(b"\n".join(lines[:5])) + 1 + len(lines[5]) // 2  # half of the 6th line
    path = tmp_path / "torn.jsonl"
    path.write_bytes(whole[:cut])
    trace = read_trace(path)
    assert len(trace.tokens) == 4 and trace.replies == []
    assert [t["piece"] for t in trace.row(0)] == PIECES[:2]
    # torn inside a multi-byte character of the last line: the same
    emoji = whole.index("😀".encode())
    path.write_bytes(whole[: emoji + 2])
    assert len(read_trace(path).tokens) == 6
    # damage in the middle is still an error naming the line
    path.write_bytes(b"\n".join([*lines[:3], lines[3][:40], *lines[4:]]))
    with pytest.raises(MonitorError, match="line 4"):
        read_trace(path)
    path.write_bytes(b"\n".join([*lines[:2], lines[2].replace(b"Hel", b"\xff\xfe"), b""]))
    with pytest.raises(MonitorError, match="line 3 is not UTF-8"):
        read_trace(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"type": "token", "row": 0, "index": 0, "piece": "x", "raw": {"afraid": NaN}}', "line 2"),
        ('{"type": "token", "row": 0, "index": 0, "piece": "x", "raw": 1e999}', "line 2"),
        ('{"type": "token", "row": -1, "index": 0, "piece": "x"}', "'row' must be"),
        ('{"type": "token", "row": 0, "index": true, "piece": "x"}', "'index' must be"),
        ('{"type": "token", "row": 0, "index": 0, "piece": 5}', "'piece' must be"),
        ('{"type": "token", "row": 0, "index": 0, "piece": "x", "raw": {}}', "'raw' must"),
        ('{"type": "reply", "row": "0"}', "reply 'row'"),
        ('{"type": "meta", "emotions": []}', "second trace header"),
        ("[1, 2]", "line 2 is not a trace record"),
        ('{"type": 5}', "line 2 is not a trace record"),
        ("[" * 100_000, "line 2 is not a trace record"),
    ],
)
def test_malformed_trace_records_are_one_clean_error(trace_file, tmp_path, line, message):
    header = trace_file.read_text("utf-8").split("\n")[0]
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{header}\n{line}\n", "utf-8")
    with pytest.raises(MonitorError, match=message):
        read_trace(path)


def test_trace_with_a_huge_raw_score_is_refused_not_overflowed(trace_file, tmp_path):
    header = json.loads(trace_file.read_text("utf-8").split("\n")[0])
    header["baseline"]["std"]["afraid"] = 1e-300
    raw = {"afraid": 10**299, "calm": 0, "happy": 0}
    token = {"type": "token", "row": 0, "index": 0, "piece": "x", "raw": raw}
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps(token) + "\n")
    with pytest.raises(MonitorError, match="out of range"):
        read_trace(path)
    token["raw"]["afraid"] = 10**400
    path.write_text(json.dumps(header) + "\n" + json.dumps(token) + "\n")
    with pytest.raises(MonitorError, match="'raw' must hold a number"):
        read_trace(path)


def test_missing_and_unreadable_traces(tmp_path):
    with pytest.raises(MonitorError, match="not found"):
        read_trace(tmp_path / "nope.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(MonitorError, match="cannot read trace"):
        read_trace(tmp_path / "dir.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(MonitorError, match="no trace header"):
        read_trace(tmp_path / "empty.jsonl")


# ----------------------------------------------------------------------------------------------
# Corpus folders
# ----------------------------------------------------------------------------------------------

TOPIC = catalog.topics()[0]
STORIES = [
    {"emotion": "happy", "topic": TOPIC, "narration": "first", "text": "I grinned all day."},
    {"emotion": "Worn_Out", "topic": TOPIC, "narration": "third", "text": "She sagged. \u2028"},
    {"emotion": "afraid", "text": "The door creaked open — nobody there."},
]
NEUTRAL = [
    {
        "topic": TOPIC,
        "turns": [
            {"role": "user", "content": "How do I boil an egg?"},
            {"role": "assistant", "content": "Put it in boiling water for nine minutes."},
        ],
    },
    {"text": "Human: hi\n\nAssistant: hello"},
]
MANIFEST = {"author": "fuzz", "counts": {"stories": 3}}


def write_corpus(folder: Path, stories=None, neutral=None, manifest=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in stories or STORIES]
    (folder / "stories.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    lines = [json.dumps(r, ensure_ascii=False) for r in neutral or NEUTRAL]
    (folder / "neutral.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    (folder / "manifest.json").write_text(json.dumps(manifest or MANIFEST), "utf-8")
    return folder


def check_corpus(corpus) -> None:
    known = set(catalog.emotions())
    for s in corpus.stories:
        assert isinstance(s["text"], str) and s["text"].strip() and s["emotion"] in known
        assert isinstance(s.get("topic", ""), str)
        assert s.get("narration", "first") in ("first", "third")
    assert all(isinstance(t, str) and t for t in corpus.neutral_texts())
    assert isinstance(corpus.manifest, dict)
    assert corpus.hash and corpus.emotions
    corpus.subset(corpus.emotions[:1])


@contextmanager
def fresh_folder(scratch: Path):
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_corpus_round_trip(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "c"))
    check_corpus(corpus)
    assert [s["emotion"] for s in corpus.stories] == ["happy", "worn out", "afraid"]
    assert corpus.stories[1]["text"].endswith("\u2028")  # one record, not split at U+2028
    assert corpus.manifest == MANIFEST


CORPUS_FILES = ["stories.jsonl", "neutral.jsonl", "manifest.json"]


@FUZZ
@given(data=st.data())
def test_fuzz_corpus_records(scratch, data):
    stories = json.loads(json.dumps(STORIES))
    neutral = json.loads(json.dumps(NEUTRAL))
    with fresh_folder(scratch) as folder:
        write_corpus(folder)
        name = data.draw(st.sampled_from(CORPUS_FILES))
        if name == "manifest.json":
            text = data.draw(st.one_of(HOSTILE.map(json.dumps), BAD_LINES))
        else:
            records = stories if name == "stories.jsonl" else neutral
            lines = [json.dumps(r, ensure_ascii=False) for r in records]
            at = data.draw(st.integers(0, len(lines) - 1))
            action = data.draw(st.sampled_from(["edit", "edit", "turn", "replace"]))
            if action == "turn" and name == "neutral.jsonl":
                record = neutral[0]
                turn = data.draw(st.integers(0, 1))
                key = data.draw(st.sampled_from(["role", "content"]))
                if data.draw(st.booleans()):
                    record["turns"][turn][key] = data.draw(HOSTILE)
                else:
                    record["turns"][turn] = data.draw(HOSTILE)
                lines[0] = json.dumps(record)
            elif action == "replace":
                lines[at] = data.draw(BAD_LINES).replace("\n", " ")
            else:
                lines[at] = data.draw(record_edit(records[at]))
            text = "\n".join(lines) + "\n"
        (folder / name).write_bytes(text.encode("utf-8", "surrogatepass"))
        corpus = attempt("corpus", CorpusError, load_corpus, folder)
        if corpus is not None:
            check_corpus(corpus)


@FUZZ
@given(data=st.data())
def test_fuzz_corpus_bytes_and_layout(scratch, data):
    with fresh_folder(scratch) as folder:
        write_corpus(folder)
        name = data.draw(st.sampled_from([*CORPUS_FILES, "stories/part.jsonl"]))
        path = folder / name
        action = data.draw(st.sampled_from(["bytes", "bytes", "directory", "remove", "latin-1"]))
        if name.startswith("stories/"):
            path.parent.mkdir()
            shutil.copy(folder / "stories.jsonl", path)
        if action == "bytes":
            path.write_bytes(mutate_bytes(path.read_bytes(), data.draw))
        elif action == "latin-1":
            path.write_bytes(path.read_text("utf-8").encode("latin-1", "replace") + b"\xe9\xff\n")
        else:
            path.unlink()
            if action == "directory":
                path.mkdir()
        corpus = attempt("corpus", CorpusError, load_corpus, folder)
        if corpus is not None:
            check_corpus(corpus)


# --- regressions: corpora ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stories", "neutral", "message"),
    [
        (None, [{"turns": [{"role": 5, "content": "hi"}]}], "neutral record 0 needs 'turns'"),
        (None, [{"turns": [{"role": ["user"], "content": "hi"}]}], "needs 'turns'"),
        (None, [{"turns": [{"role": "user", "content": None}]}], "needs 'turns'"),
        (None, [{"turns": []}], "needs 'turns'"),
        (None, [{"text": 5, "turns": NEUTRAL[0]["turns"]}], "'text' must be a non-empty string"),
        (None, [{**NEUTRAL[1], "topic": ["x"]}], "'topic' must be a string"),
        ([{**STORIES[0], "text": 5}], None, "story 0 has no 'text'"),
        ([{**STORIES[0], "text": {"a": 1}}], None, "story 0 has no 'text'"),
        ([{**STORIES[0], "topic": 5}], None, "story 0: 'topic' must be a string"),
        ([{**STORIES[0], "narration": "second"}], None, "'narration' must be"),
        ([{**STORIES[0], "narration": None}], None, "'narration' must be"),
        ([{**STORIES[0], "emotion": 5}], None, "story 0 has no 'emotion'"),
    ],
)
def test_malformed_corpus_records_are_one_clean_error(tmp_path, stories, neutral, message):
    folder = write_corpus(tmp_path / "c", stories=stories, neutral=neutral)
    with pytest.raises(CorpusError, match=message):
        load_corpus(folder)


def test_unreadable_corpus_files_are_one_clean_error(tmp_path):
    folder = write_corpus(tmp_path / "c")
    (folder / "stories.jsonl").write_bytes(b'{"emotion": "happy", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="cannot read corpus file"):
        load_corpus(folder)
    (folder / "stories.jsonl").unlink()
    (folder / "stories.jsonl").mkdir()  # a directory named stories.jsonl
    with pytest.raises(CorpusError, match="no stories.jsonl"):
        load_corpus(folder)
    (folder / "stories").mkdir()
    (folder / "stories" / "part.jsonl").mkdir()
    with pytest.raises(CorpusError, match="cannot read corpus file"):
        load_corpus(folder)
    folder = write_corpus(tmp_path / "d")
    for line, message in [
        ("[" * 100_000, "not valid JSON"),
        ("9" * 5000, "not valid JSON"),
        ('{"emotion": "happy", "text": "\\ud800"}', "unpaired surrogate"),
    ]:
        (folder / "stories.jsonl").write_text(line + "\n")
        with pytest.raises(CorpusError, match=message):
            load_corpus(folder)
    write_corpus(folder)
    (folder / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(CorpusError, match="cannot read"):
        load_corpus(folder)


# ----------------------------------------------------------------------------------------------
# Monitor baselines
# ----------------------------------------------------------------------------------------------

BASELINE = {
    "format": "emovec.baseline/1",
    "emotions": ["happy", "afraid", "calm"],
    "layer": 3,
    "mean": [0.1, -0.2, 0.0],
    "std": [0.5, 1.5, 0.01],
    "source": "fuzz (3 texts)",
    "n_tokens": 120,
    "key": "0" * 16,
    "center": True,
}


def check_baseline(baseline: Baseline) -> None:
    n = len(baseline.emotions)
    assert n and all(isinstance(e, str) for e in baseline.emotions)
    assert baseline.mean.shape == baseline.std.shape == (n,)
    assert np.isfinite(baseline.mean).all() and (baseline.std > 0).all()
    assert np.isfinite(baseline.std).all()
    assert isinstance(baseline.layer, int) and isinstance(baseline.n_tokens, int)
    assert isinstance(baseline.center, bool) and isinstance(baseline.key, str)
    baseline.select(baseline.emotions[:1])
    json.dumps(baseline.to_dict(), allow_nan=False)


@FUZZ
@given(data=st.data())
def test_fuzz_baseline(scratch, data):
    path = scratch / "baseline.json"
    if data.draw(st.booleans()):
        text = data.draw(record_edit(BASELINE))
        raw = text.encode("utf-8", "surrogatepass")
    elif data.draw(st.booleans()):
        raw = mutate_bytes(json.dumps(BASELINE, indent=1).encode(), data.draw)
    else:
        raw = data.draw(st.one_of(BAD_LINES, HOSTILE.map(json.dumps))).encode(
            "utf-8", "surrogatepass"
        )
    path.write_bytes(raw)
    baseline = attempt("baseline", MonitorError, Baseline.load, path)
    if baseline is not None:
        check_baseline(baseline)


def test_baseline_round_trip_and_hostile_fields(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(BASELINE))
    check_baseline(Baseline.load(path))
    for edit in [
        {"mean": [0.1, 0.2]},
        {"std": [0.5, 0.0, 1.0]},
        {"std": [0.5, 1e-300, 1.0]},
        {"layer": 1e999},
        {"emotions": 5},
        {"mean": [[1], [2], [3]]},
        {"center": "no"},
    ]:
        path.write_text(json.dumps({**BASELINE, **edit}))
        with pytest.raises(MonitorError, match="not an emovec baseline"):
            Baseline.load(path)
    path.write_text("[" * 100_000)
    with pytest.raises(MonitorError, match="not an emovec baseline"):
        Baseline.load(path)


# ----------------------------------------------------------------------------------------------
# Study logs (AppendLog, read_log, load_rollouts)
# ----------------------------------------------------------------------------------------------

ROLLOUTS = [
    {"condition": "unsteered", "index": 0, "flag": False, "reply": "No."},
    {"condition": "happy +0.1", "index": 0, "flag": True, "reply": "Sure \u2028 yes 😀"},
    {"condition": "happy +0.1", "index": 1, "flag": None, "scores": {"calm": 0.25}},
]


def _good_records(raw: bytes) -> list[dict]:
    """Complete lines that are JSON objects with both rollout keys: what no reader may drop."""
    good = []
    for line in raw.split(b"\n")[:-1]:
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and "condition" in record and "index" in record:
            good.append(record)
    return good


def _same(a: list[dict], b: list[dict]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@FUZZ
@given(data=st.data())
def test_fuzz_study_logs(scratch, data):
    import warnings

    lines = [json.dumps(r, ensure_ascii=False) for r in ROLLOUTS]
    action = data.draw(st.sampled_from(["bytes", "edit", "replace", "insert"]))
    if action == "bytes":
        raw = mutate_bytes(("\n".join(lines) + "\n").encode(), data.draw)
    else:
        at = data.draw(st.integers(0, len(lines) - 1))
        if action == "edit":
            lines[at] = data.draw(record_edit(ROLLOUTS[at]))
        else:
            bad = data.draw(st.one_of(BAD_LINES, HOSTILE.map(json.dumps))).replace("\n", " ")
            if action == "replace":
                lines[at] = bad
            else:
                lines.insert(at, bad)
        raw = ("\n".join(lines) + ("\n" if data.draw(st.booleans()) else "")).encode(
            "utf-8", "surrogatepass"
        )
    good = _good_records(raw)
    path = scratch / "rollouts.jsonl"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedLogWarning)
        records = attempt("study_log", StudyError, load_rollouts, path)
        assert records is not None and _same(records, good)
        assert path.read_bytes() == raw  # read without repair: unchanged
        logged = attempt("study_log", StudyError, load_rollouts, path, True)
        assert logged is not None and _same(logged, good)
        complete = raw.rfind(b"\n") + 1
        assert path.read_bytes() == raw[:complete]  # only a torn last line is cut
        log = AppendLog(path, required=("condition", "index"))
        log.append({"condition": "calm +0.1", "index": 2})
        again = read_log(path, required=("condition", "index"), warn=False)
    assert _same(again, [*good, {"condition": "calm +0.1", "index": 2}])


# ----------------------------------------------------------------------------------------------
# Scenario files
# ----------------------------------------------------------------------------------------------

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "src" / "emovec" / "data" / "studies"
SCENARIO_FILES = sorted(SCENARIO_DIR.glob("*.json"))
SCENARIO_KEYS = [
    "name",
    "grader",
    "items",
    "description",
    "family",
    "system",
    "user",
    "feedback",
    "max_new_tokens",
    "watch",
    "default_conditions",
    "reference",
    "judge_prompt",
    "extra",
]


def check_scenario(scenario: Scenario) -> None:
    assert isinstance(scenario.name, str) and scenario.items
    for item in scenario.items:
        for turn in scenario.turns(item):
            assert isinstance(turn["role"], str) and isinstance(turn["content"], str)
    for condition in scenario.conditions():
        assert isinstance(condition.name, str)
    assert isinstance(scenario.max_new_tokens, int) and scenario.max_new_tokens > 0
    assert all(isinstance(e, str) for e in scenario.watch)


@st.composite
def scenario_edit(draw, scenario: dict[str, Any]) -> str:
    scenario = json.loads(json.dumps(scenario))
    key = draw(st.sampled_from(SCENARIO_KEYS))
    choice = draw(st.sampled_from(["hostile", "delete", "inner", "inner"]))
    value = scenario.get(key)
    if choice == "delete":
        scenario.pop(key, None)
    elif choice == "inner" and isinstance(value, list) and value:
        at = draw(st.integers(0, len(value) - 1))
        if isinstance(value[at], dict) and value[at] and draw(st.booleans()):
            value[at][draw(st.sampled_from(sorted(value[at])))] = draw(HOSTILE)
        else:
            value[at] = draw(HOSTILE)
    elif choice == "inner" and isinstance(value, dict) and value:
        value[draw(st.sampled_from(sorted(value)))] = draw(HOSTILE)
    elif choice == "inner" and isinstance(value, str):
        at = draw(st.integers(0, len(value)))
        value = (
            value[:at] + draw(st.sampled_from(["{", "}", "{nope}", "{0}", "{id!z}"])) + value[at:]
        )
        scenario[key] = value
    else:
        scenario[key] = draw(HOSTILE)
    return json.dumps(scenario, ensure_ascii=draw(st.booleans()))


@FUZZ
@given(data=st.data())
def test_fuzz_scenario_files(scratch, data):
    source = data.draw(st.sampled_from(SCENARIO_FILES))
    path = scratch / "scenario.json"
    if data.draw(st.booleans()):
        raw = data.draw(scenario_edit(json.loads(source.read_text("utf-8"))))
        path.write_bytes(raw.encode("utf-8", "surrogatepass"))
    elif data.draw(st.booleans()):
        path.write_bytes(mutate_bytes(source.read_bytes(), data.draw))
    else:
        raw = data.draw(st.one_of(BAD_LINES, HOSTILE.map(json.dumps)))
        path.write_bytes(raw.encode("utf-8", "surrogatepass"))
    scenario = attempt("scenario", StudyError, load_scenario, path)
    if scenario is not None:
        check_scenario(scenario)


def test_bundled_scenarios_load_and_bad_ones_are_one_clean_error(tmp_path):
    for source in SCENARIO_FILES:
        check_scenario(load_scenario(source))
    base = json.loads(SCENARIO_FILES[0].read_text("utf-8"))
    path = tmp_path / "bad.json"
    for edit in [
        {"items": 5},
        {"items": [1, 2]},
        {"grader": ["x"]},
        {"max_new_tokens": "80"},
        {"default_conditions": [{"emotion": "happy", "strength": 10**400}]},
        {"user": "{nope}"},
        {"user": "{"},
    ]:
        path.write_text(json.dumps({**base, **edit}))
        with pytest.raises(StudyError):
            load_scenario(path)
    for raw in [b"[" * 100_000, b"9" * 5000, b"[1, 2]", b'{"name": "\xff"}']:
        path.write_bytes(raw)
        with pytest.raises(StudyError):
            load_scenario(path)
