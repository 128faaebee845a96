"""Crash safety: every long job is run in a child process, SIGKILLed at several points, run
again to completion, and compared with an uninterrupted run.

Kills are chained: each child continues what the killed one before it left (so a resumed run
is killed too), and the last rerun completes in this process. After every kill the output
files are checked as they lie (whole shards only, no half vector file, a readable trace, a
whole report or none), and at the end nothing may be lost or duplicated.

With ``EMOVEC_CRASH_REPORT`` set, the kill points tried and the records lost are written to
``benchmarks/results/crash.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import emovec
from emovec.files import DamagedLogWarning, write_atomic

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(emovec.__file__).resolve().parents[1]

#: Job settings shared by the children and this process (executed in both).
COMMON = r"""
import json, sys, time
from pathlib import Path

EMOTIONS = ["happy", "sad", "calm", "afraid"]
LAYERS = [2, 4]


def tiny_corpus():
    from emovec.corpus import Corpus, load_corpus

    full = load_corpus("curated-v1")
    stories = [s for e in EMOTIONS for s in full.subset([e]).stories[:3]]
    return Corpus(stories, full.neutral[:4], "crash-test")


def pooled_cache(lm, folder):
    from emovec.activation_cache import PooledCache

    cache = PooledCache.for_model(lm, root=folder)
    cache.flush_every = 2  # a shard per batch, so that kills land between shards
    return cache


def run_extract(lm, cache):
    from emovec.extraction import extract

    # the method pinned (defaults may change): neutral dialogues go through the cache too
    return extract(lm, tiny_corpus(), cache=cache, layers=LAYERS, batch_size=2, max_tokens=128,
                   denoise="dialogues", reader="whitened")


def run_corpus(lm, folder):
    from emovec import authoring as A

    topics = A.load_topics(limit=1)  # 2 requests, 1 a batch: prompts are ~140 tokens each
    design = A.StoryDesign(["calm", "lonely"], topics, per_topic=1, min_words=1, max_words=1000)
    author = A.LocalAuthor(lm, batch_size=1)
    return A.write_corpus(folder, design, author, A.Sampling(max_new_tokens=4), seed=0)


def tiny_study():
    from emovec.studies import Condition, Study, load_scenario

    return Study(load_scenario("sycophancy"), [Condition("happy", 0.5)], rollouts=2,
                 max_new_tokens=3, items=["great-wall"])


PROMPT = "Tell me about the old lighthouse keeper and the storm."
MONITOR_TOKENS = 16
"""

_JOBS: dict = {}
exec(COMMON, _JOBS)  # noqa: S102 - the same definitions as the children's
run_extract, pooled_cache = _JOBS["run_extract"], _JOBS["pooled_cache"]
run_corpus, tiny_study = _JOBS["run_corpus"], _JOBS["tiny_study"]

#: Children: argv[1] is a JSON object of arguments; they print progress lines on stdout.
CHILD = {
    "extract": """
from emovec.models import load_model
lm = load_model()
vectors = run_extract(lm, pooled_cache(lm, args["cache"]))
print("saving", flush=True)
vectors.save(args["out"])
""",
    "corpus": """
from emovec.models import load_model
lm = load_model()
print("ready", flush=True)
run_corpus(lm, Path(args["folder"]))
""",
    "study": """
from emovec.models import load_model
from emovec.studies import run_study
from emovec.vectors import EmotionVectors
lm = load_model()
vectors = EmotionVectors.load(args["vectors"])
print("ready", flush=True)
run_study(lm, vectors, tiny_study(), args["out"])
""",
    "monitor": """
from emovec.models import load_model
from emovec.monitor import LiveMonitor, calibrate
from emovec.vectors import EmotionVectors
lm = load_model()
vectors = EmotionVectors.load(args["vectors"])
baseline = calibrate(lm, vectors, limit=1, max_tokens=16, cache=args["baseline"])
live = LiveMonitor(lm, vectors, baseline=baseline)
note = lambda e: print(e.index, repr(time.monotonic()), flush=True)
live.generate(PROMPT, max_new_tokens=MONITOR_TOKENS, min_new_tokens=MONITOR_TOKENS,
              trace=args["trace"], on_token=note)
""",
    "report": """
from emovec.apps.report import build_report
while True:
    build_report(args["root"])
""",
}

#: Figures per job, written to benchmarks/results/crash.json with EMOVEC_CRASH_REPORT set.
FIGURES: dict[str, dict] = {}
#: Every child started, and the uninterrupted extraction (vectors, file) once made.
_CHILDREN: list = []
_REFERENCE: dict[str, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def crash_report():
    yield
    for child in _CHILDREN:  # a failed test may leave one running: none outlives the module
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
    if "vectors" in _REFERENCE:
        shutil.rmtree(_REFERENCE.pop("vectors")[1].parent, ignore_errors=True)
    if os.environ.get("EMOVEC_CRASH_REPORT") and FIGURES:
        durable = {name: job for name, job in FIGURES.items() if name != "monitor"}
        report = {
            "what": "SIGKILL at several points of each long job, rerun to completion, compared "
            "with an uninterrupted run (tests/test_crash_safety.py)",
            "kill_points": sum(job["kill_points"] for job in FIGURES.values()),
            "killed_mid_run": sum(job["killed_mid_run"] for job in FIGURES.values()),
            "records_checked": sum(job["records_checked"] for job in durable.values()),
            "records_lost": sum(job["records_lost"] for job in durable.values()),
            "trace_tokens_checked": FIGURES.get("monitor", {}).get("records_checked", 0),
            "trace_tokens_lost_within_flush_interval": FIGURES.get("monitor", {}).get(
                "records_lost", 0
            ),
            "jobs": FIGURES,
        }
        write_atomic(
            ROOT / "benchmarks" / "results" / "crash.json", json.dumps(report, indent=1) + "\n"
        )


class Child:
    """One job in a child process (stdout and stderr in files), killed by a watcher thread
    once its kill point is reached, so that this process can work meanwhile."""

    def __init__(self, job: str, runs: Path, **args):
        runs.mkdir(parents=True, exist_ok=True)
        n = len(list(runs.glob("stdout-*.txt")))
        self.stdout_path, self.stderr_path = runs / f"stdout-{n}.txt", runs / f"stderr-{n}.txt"
        env = {**os.environ, "PYTHONPATH": str(SRC), "TOKENIZERS_PARALLELISM": "false"}
        code = COMMON + "\nargs = json.loads(sys.argv[1])\n" + CHILD[job]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(args)], env=env, stdout=out, stderr=err
            )
        self._thread: threading.Thread | None = None
        self._outcome: list = []
        _CHILDREN.append(self)

    def lines(self) -> list[str]:
        text = self.stdout_path.read_text()
        return text[: text.rfind("\n") + 1].splitlines()

    def kill_when(self, ready: Callable[[], bool], timeout: float = 300) -> Child:
        """Start watching: SIGKILL the child as soon as ``ready()`` holds."""

        def watch() -> None:
            deadline = time.monotonic() + timeout
            try:
                while not ready() and self.proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the kill point was never reached")
                    time.sleep(0.005)
            except BaseException as exc:  # reported by killed()
                self._outcome.append(exc)
            running = self.proc.poll() is None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self._outcome.append(running)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def killed(self) -> bool:
        """Wait for the kill; True if the job was still running (killed mid-run), False if it
        had finished first."""
        assert self._thread is not None
        self._thread.join()
        if isinstance(self._outcome[0], BaseException):
            raise self._outcome[0]
        running = self._outcome[-1]
        if not running:
            assert self.proc.returncode == 0, self.stderr_path.read_text()[-3000:]
        return running


def newlines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def reference_extraction(lm) -> tuple:
    """An uninterrupted extraction (no cache), saved for the study and monitor children."""
    if "vectors" not in _REFERENCE:
        vectors = run_extract(lm, None)
        folder = Path(tempfile.mkdtemp(prefix="emovec-crash-"))
        _REFERENCE["vectors"] = vectors, vectors.save(folder / "vectors.safetensors")
    return _REFERENCE["vectors"]


@pytest.fixture(scope="module")
def reference_vectors(lm):
    return reference_extraction(lm)


# ----------------------------------------------------------------------------- extraction


def whole_shards(folder: Path) -> tuple[set[str], int]:
    """Keys held by the shards, after checking every shard reads whole; and stray temp files."""
    from safetensors import safe_open

    keys: set[str] = set()
    for shard in folder.rglob("shard-*.safetensors"):
        with safe_open(shard, "pt") as f:
            meta = f.metadata()
            rows = json.loads(meta["keys"])
            tensors = {name: f.get_tensor(name) for name in ("pooled", "norm_sum", "count")}
        assert meta["format"] == "emovec.pooled/1"
        assert all(t.shape[0] == len(rows) for t in tensors.values()), shard.name
        keys.update(rows)
    return keys, len(list(folder.rglob("*.tmp")))


def test_extraction_killed_with_a_cache_reruns_to_the_same_vectors(lm, tmp_path):
    from emovec.vectors import EmotionVectors

    cache, out = tmp_path / "cache", tmp_path / "vectors.safetensors"
    runs = tmp_path / "runs"

    def shards() -> int:
        return len(list(cache.rglob("shard-*.safetensors")))

    child = Child("extract", runs, cache=str(cache), out=str(out)).kill_when(lambda: shards() >= 1)
    reference, _ = reference_extraction(lm)  # meanwhile, the uninterrupted run
    mid = [child.killed()]
    whole_shards(cache)
    assert not out.exists()
    # the next child resumes from the cache and is killed as it starts writing its vectors
    child = Child("extract", runs, cache=str(cache), out=str(out))
    mid.append(child.kill_when(lambda: "saving" in child.lines()).killed())
    keys, stray = whole_shards(cache)
    if out.exists():  # the rename happened before the kill: the file must be whole
        EmotionVectors.load(out)
    out.unlink(missing_ok=True)
    # a kill inside the save leaves our temp file, or safetensors' own (since 0.8 it writes
    # through a `.tmpXXXXXX` beside the target and renames it); never a half-written `out`
    stray_vectors = [*tmp_path.glob(f".{out.name}.*.tmp"), *tmp_path.glob(".tmp??????")]
    assert {p.name for p in tmp_path.iterdir()} - {p.name for p in stray_vectors} == {
        "cache",
        "runs",
    }

    rerun = run_extract(lm, pooled_cache(lm, cache))
    rerun.save(out)
    loaded = EmotionVectors.load(out)
    names = ("vectors", "mean_activation", "residual_norm", "readers")
    diffs = [
        (getattr(loaded, n).float() - getattr(reference, n).float()).abs().max() for n in names
    ]
    assert max(diffs) <= 1e-6, dict(zip(names, diffs, strict=True))
    assert loaded.emotions == reference.emotions and loaded.layers == reference.layers
    assert loaded.default_layer == reference.default_layer
    cached = rerun.metrics["cached_texts"]
    assert cached == len(keys) > 0  # every text in a whole shard was reused, none recomputed
    FIGURES["extraction"] = {
        "kill_points": 2,
        "killed_mid_run": sum(mid),
        "records": "pooled texts in cache shards",
        "records_checked": cached,
        "records_lost": len(keys) - cached,
        "stray_temp_files": stray + len(stray_vectors),
        "max_abs_difference": float(max(diffs)),
    }


# ----------------------------------------------------------------------------- corpus writing


def _replies(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "stories.replies.jsonl").read_text().splitlines()]


def seconds_after_ready(child: Child, seconds: float) -> Callable[[], bool]:
    """A kill point: ``seconds`` after the child says its model is loaded (mid-generation)."""
    seen: list[float] = []

    def ready() -> bool:
        if "ready" not in child.lines():
            return False
        seen[:] = seen or [time.monotonic()]
        return time.monotonic() - seen[0] >= seconds

    return ready


def test_corpus_writing_killed_twice_gives_the_same_records(lm, tmp_path):
    """Killed inside the first batch's generation, then once the first batch is written."""
    folder, reference_folder = tmp_path / "killed", tmp_path / "reference"
    log = folder / "stories.replies.jsonl"
    runs = tmp_path / "runs"
    child = Child("corpus", runs, folder=str(folder))
    child.kill_when(seconds_after_ready(child, 0.3))
    assert run_corpus(lm, reference_folder).complete  # meanwhile, the uninterrupted run
    reference = {r["index"]: r for r in _replies(reference_folder)}
    assert len(reference) == 2
    mid, seen = [child.killed()], {}
    child = Child("corpus", runs, folder=str(folder))
    mid.append(child.kill_when(lambda: newlines(log) >= 1).killed())
    for record in _replies(folder):
        assert record == reference[record["index"]]  # every whole record is right
        seen[record["index"]] = record
    assert seen and (not (folder / "stories.jsonl").exists() or len(seen) == 2)
    with open(log, "ab") as f:  # as a kill in the middle of a write leaves it
        f.write(b'{"index": 1, "key": "lonely|')
    assert run_corpus(lm, folder).complete
    final = _replies(folder)
    indices = [r["index"] for r in final]
    assert sorted(indices) == sorted(reference) and len(set(indices)) == len(indices)
    assert all(r == reference[r["index"]] for r in final)
    assert all(r in final for r in seen.values())  # nothing written before a kill was redone
    for name in ("stories.jsonl", "stories.rejects.jsonl"):
        assert (folder / name).read_bytes() == (reference_folder / name).read_bytes()
    manifests = [json.loads((f / "manifest.json").read_text()) for f in (folder, reference_folder)]
    assert manifests[0]["hash"] == manifests[1]["hash"]
    FIGURES["corpus"] = {
        "kill_points": 2,
        "killed_mid_run": sum(mid),
        "torn_lines_added": 1,
        "records": "replies",
        "records_checked": len(final),
        "records_kept_from_killed_runs": len(seen),
        "records_lost": len(set(reference) - set(indices)),
        "duplicates": len(indices) - len(set(indices)),
    }


# ----------------------------------------------------------------------------- study rollouts


def same_rollout(a: dict, b: dict) -> bool:
    """Equal records but for the timing, and the trace scores within rounding."""
    plain = [{k: v for k, v in r.items() if k not in ("generate_seconds", "trace")} for r in (a, b)]
    ta, tb = a["trace"], b["trace"]
    return (
        plain[0] == plain[1]
        and {k: v for k, v in ta.items() if k != "scores"}
        == {k: v for k, v in tb.items() if k != "scores"}
        and torch.allclose(torch.tensor(ta["scores"]), torch.tensor(tb["scores"]), atol=1e-4)
    )


def test_study_killed_twice_then_damaged_gives_the_same_records(lm, reference_vectors, tmp_path):
    """Killed inside the first rollout, then once a rollout is written; finished here; then
    its first record is damaged on disk and the study run once more."""
    from emovec.studies import load_rollouts, run_study

    vectors, vectors_file = reference_vectors
    out, runs = tmp_path / "killed", tmp_path / "runs"
    path = out / "rollouts.jsonl"
    child = Child("study", runs, vectors=str(vectors_file), out=str(out))
    child.kill_when(seconds_after_ready(child, 0.3))
    run_study(lm, vectors, tiny_study(), tmp_path / "reference")  # meanwhile, uninterrupted
    records = load_rollouts(tmp_path / "reference" / "rollouts.jsonl")
    reference = {(r["condition"], r["index"]): r for r in records}
    assert len(reference) == 2
    mid, kept = [child.killed()], {}
    child = Child("study", runs, vectors=str(vectors_file), out=str(out))
    mid.append(child.kill_when(lambda: newlines(path) >= 1).killed())
    for r in load_rollouts(path):
        assert same_rollout(r, reference[(r["condition"], r["index"])])
        kept[(r["condition"], r["index"])] = r
    assert kept and (not (out / "result.json").exists() or len(kept) == 2)
    with open(path, "ab") as f:
        f.write(b'{"condition": "happy +0.5", "in')  # a torn write after the kill
    run_study(lm, vectors, tiny_study(), out)
    finished = load_rollouts(path)
    assert [r["index"] for r in finished] == [0, 1] and finished[0] == kept[
        finished[0]["condition"], 0
    ]
    # damage the first record in place (a bad sector, an editor): the rerun skips it with a
    # warning, keeps the record after it, and redoes the damaged one
    data = bytearray(path.read_bytes())
    data[5:9] = b"\x00\x00\x00\x00"
    path.write_bytes(bytes(data))
    with pytest.warns(DamagedLogWarning, match="line 1"):
        summary = run_study(lm, vectors, tiny_study(), out)
    with pytest.warns(DamagedLogWarning):
        final = load_rollouts(path)
    assert final[0] == finished[1]  # the later record was kept as it was
    keys = [(r["condition"], r["index"]) for r in final]
    assert sorted(keys) == sorted(reference) and len(set(keys)) == len(keys)
    assert all(same_rollout(r, reference[(r["condition"], r["index"])]) for r in final)
    assert [c["n"] for c in summary["conditions"]] == [2]
    FIGURES["study"] = {
        "kill_points": 2,
        "killed_mid_run": sum(mid),
        "torn_lines_added": 1,
        "damaged_lines_added": 1,
        "records": "rollouts",
        "records_checked": len(final),
        "records_kept_from_killed_runs": len(kept),
        "records_lost": len(set(reference) - set(keys)),
        "duplicates": len(keys) - len(set(keys)),
    }


# ----------------------------------------------------------------------------- monitor traces


def test_monitor_trace_after_a_kill_loses_at_most_the_last_flush_interval(
    lm, reference_vectors, tmp_path
):
    from emovec.monitor import TraceWriter, calibrate, read_trace

    vectors, vectors_file = reference_vectors
    baseline = tmp_path / "baseline.json"
    calibrate(lm, vectors, limit=1, max_tokens=16, cache=baseline)
    flush_every = TraceWriter.__init__.__defaults__[0]
    slack = 0.3  # scheduling between the writer's clock check and the child's own print
    figures = {"kill_points": 0, "killed_mid_run": 0, "records_checked": 0, "records_lost": 0}
    spans = []
    children = []
    for n, at_tokens in enumerate((4, 12)):  # side by side: independent traces
        trace = tmp_path / f"trace-{n}.jsonl"
        child = Child("monitor", tmp_path / "runs", vectors=str(vectors_file),
                      baseline=str(baseline), trace=str(trace))  # fmt: skip
        children.append((child.kill_when(lambda c=child, k=at_tokens: len(c.lines()) >= k), trace))
    for child, trace in children:
        figures["killed_mid_run"] += child.killed()
        figures["kill_points"] += 1
        printed = [(int(a), float(b)) for a, b in (line.split() for line in child.lines())]
        loaded = read_trace(trace)  # whatever the kill left is readable
        traced = [t["index"] for t in loaded.tokens]
        assert traced == list(range(len(traced)))  # a prefix, in order, nothing corrupt
        assert len(traced) <= len(printed) + 1  # at most the one token not yet printed
        lost = printed[len(traced) :]
        if lost:
            spans.append(lost[-1][1] - lost[0][1])
            assert spans[-1] < flush_every + slack, (len(lost), spans[-1])
        figures["records_checked"] += len(printed)
        figures["records_lost"] += len(lost)
    FIGURES["monitor"] = {
        **figures,
        "records": "trace token lines",
        "flush_every_s": flush_every,
        "lost_span_max_s": round(max(spans, default=0.0), 3),
        "note": "the tokens lost are those queued since the last flush, as designed",
    }


# ----------------------------------------------------------------------------- report


def test_a_killed_report_write_never_leaves_half_a_page(tmp_path):
    from emovec.apps.report import build_report

    root = tmp_path / "results"
    section = root / "big"
    section.mkdir(parents=True)
    (section / "fig.png").write_bytes(os.urandom(3_000_000))  # a large page: long writes
    result = {
        "format": "emovec.result/1",
        "name": "big",
        "title": "A large section",
        "figures": [{"file": "fig.png", "caption": "random bytes"}],
    }
    (section / "result.json").write_text(json.dumps(result))
    page = build_report(root)
    whole = page.stat().st_size
    delays = (0.0, 0.1, 0.25)
    mid, during_write = 0, 0
    for delay in delays:
        page.unlink(missing_ok=True)
        start: list[float] = []

        def ready(wait=delay, t=start) -> bool:
            if not page.exists():  # the child's first page: later ones replace it
                return False
            t[:] = t or [time.monotonic()]
            return time.monotonic() - t[0] >= wait

        mid += Child("report", tmp_path / "runs", root=str(root)).kill_when(ready).killed()
        temps = list(root.glob(".report.html.*.tmp"))
        during_write += bool(temps)
        for tmp in temps:
            tmp.unlink()
        data = page.read_bytes()  # the last rename before the kill left a whole page
        assert len(data) == whole and data.endswith(b"</body></html>"), len(data)
    assert build_report(root).stat().st_size == whole
    FIGURES["report"] = {
        "kill_points": len(delays),
        "killed_mid_run": mid,
        "kills_during_a_write": during_write,
        "records": "report pages",
        "records_checked": len(delays),
        "records_lost": 0,
        "half_pages": 0,
    }
