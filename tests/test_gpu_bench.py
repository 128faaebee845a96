"""The GPU benchmark script in its CPU toy mode, and the host syncs it counts.

The script is meant for a CUDA machine; here it runs on tiny randomly initialised models so
that its shape (JSON and markdown) is checked wherever the suite runs. The sync counts are
checked on the same tiny models: every host read of a device tensor would make a GPU wait.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    """The toy Llama of the benchmark, with random vectors and two live monitors."""
    from emovec.monitor import LiveMonitor

    lm = bench_gpu.build_lm(
        "llama-toy", bench_gpu.TOY_SHAPES["llama-toy"], torch.device("cpu"), torch.float32
    )
    layer = round((lm.n_layers - 1) * 2 / 3)
    vectors = bench_gpu.random_vectors(lm, layer, 10.0)
    baseline = bench_gpu._baseline(lm, vectors)
    monitors = {
        "monitored, 6 emotions": LiveMonitor(
            lm, vectors, bench_gpu.SIX, baseline=baseline, hidden=None
        ),
        "monitored, 171 emotions": LiveMonitor(lm, vectors, None, baseline=baseline, hidden=None),
    }
    return lm, vectors, monitors


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_toy_run_writes_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_gpu.py"),
            "--toy",
            "--models",
            "llama-toy",
            "--json",
            str(out_json),
            "--md",
            str(out_md),
            "--budget-s",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert results["meta"]["toy"] is True and results["meta"]["device"] == "cpu"
    model = results["models"]["llama-toy"]
    assert "error" not in model and not model["skipped"]

    settings = model["extraction"]["settings"]
    assert len(settings) == 2  # two-thirds depth and all layers
    for setting in settings.values():
        names = [row["name"] for row in setting["rows"]]
        assert names[0].startswith("floor") and "emovec" in names
        assert "transformers output_hidden_states" in names
        for row in setting["rows"]:
            assert _positive(row["tokens_per_s"]) and _positive(row["vs_floor"])
            assert row["peak_gib"] is None  # no GPU memory to report on a CPU
            error = row["max_rel_diff_vs_hidden_states"]
            assert error is None or error < 1e-4  # the same means as transformers' own

    batches = [gen["batch"] for gen in model["generation"]]
    assert batches == [1, 4]
    for gen in model["generation"]:
        variants = [row["variant"] for row in gen["rows"]]
        assert variants[:2] == ["plain", "steered (happy 0.5)"] and len(variants) == 4
        for row in gen["rows"]:
            assert _positive(row["tokens_per_s"])
            if row["variant"] != "plain":
                low, high = row["overhead_ci95"]
                assert math.isfinite(row["overhead"]) and low <= high
            if row["variant"].startswith("monitored"):
                assert 0 < row["monitor_self_timed_share"] < 1

    for count in model["syncs"]:
        assert set(count["per_step"]) == {"plain", "steered (happy 0.5)", *variants[2:]}
        assert all(math.isfinite(v) and v >= 0 for v in count["per_step"].values())

    checks = {c["name"]: c for c in results["compile"]["checks"]}
    assert len(checks) == 8
    assert all(
        c["status"] in {"works", "ignored", "stale", "broken", "error"} for c in checks.values()
    )
    # Steering hooks added after torch.compile are invisible unless hooks are guarded.
    assert checks["same, hooks guarded (skip_nnmodule_hook_guards=False)"]["status"] == "works"
    # Steering by absolute position reads the static cache's length on the device: no breaks.
    absolute = checks[
        "static cache + compiled decode, steer positions >= prompt_length, hooks guarded"
    ]
    assert absolute["status"] == "works" and absolute["graph_breaks"] == 0

    text = out_md.read_text()
    assert "| emovec |" in text and "host syncs per decode step" in text
    assert "Compile and static cache" in text


def test_live_monitor_reads_the_device_once_per_decode_step(toy):
    """Plain generation reads the device itself (transformers' stop check: once a step at
    batch 1, plus its attention-mask check at larger batches); live monitoring adds one read
    per step, however many emotions and rows: scores and token ids come back in one copy."""
    lm, vectors, monitors = toy
    for batch in (1, 3):
        counts = bench_gpu.count_syncs(lm, vectors, monitors, batch, np.random.default_rng(0))
        plain = counts["per_step"]["plain"]
        assert plain >= 1, counts
        assert counts["per_step"]["steered (happy 0.5)"] == plain, counts
        for name in monitors:
            assert counts["per_step"][name] <= plain + 1, (batch, counts)
            added = {
                method: n - counts["by_method"]["plain"].get(method, 0)
                for method, n in counts["by_method"][name].items()
            }
            assert sum(added.values()) <= 1, (batch, name, added)


def test_live_scores_on_the_toy_model_equal_reading(toy):
    """Scores computed on the device and read once per step are still read()'s scores."""
    from emovec.reading import read

    lm, vectors, monitors = toy
    live = monitors["monitored, 6 emotions"]
    prompt = bench_gpu.as_text(list(range(10, 30)))
    reply = live.generate(prompt, max_new_tokens=6, min_new_tokens=6, chat=False)
    text = bench_gpu.as_text(lm.encode(prompt) + reply.token_ids)
    reading = read(lm, vectors, text, emotions=live.emotions)
    n_prompt = len(lm.encode(prompt))
    np.testing.assert_allclose(reply.raw, reading.scores[n_prompt:], atol=2e-4)


def test_extraction_reads_the_device_once_per_batch_not_per_layer(toy):
    """Pooling stays on the model's device; reading one layer or all of them costs the same
    number of host reads per batch."""
    from emovec.extraction import ExtractionSettings, PooledPass

    lm, _, _ = toy
    ids = bench_gpu.random_ids(np.random.default_rng(0), 1024, [40, 60, 80, 100])
    reads = []
    for layers in ([1], list(range(lm.n_layers))):
        passer = PooledPass(lm, layers, ExtractionSettings(batch_size=2), workers=1)
        with bench_gpu.counting_host_reads(lm.device) as counts:
            for _ in passer.run(ids):
                pass
        reads.append(sum(counts.values()))
    assert reads[0] == reads[1], reads


def test_steering_takes_effect_on_a_model_compiled_before_it(toy):
    """torch skips compiled code's guards on module hooks by default, so a hook added after
    the first compiled call was silently ignored; emovec turns the guards on for its models."""
    import torch._dynamo as dynamo

    from emovec.steering import steer

    lm, vectors, _ = toy
    ids = torch.randint(
        0, lm.model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0)
    )
    dynamo.reset()
    try:
        with torch.no_grad():
            plain = lm.model(input_ids=ids).logits[:, -1]
            with steer(lm, vectors, {"happy": 4.0}):
                expected = lm.model(input_ids=ids).logits[:, -1]
            forward = torch.compile(lm.model.forward, backend="eager")
            forward(input_ids=ids)  # compiled without hooks
            with steer(lm, vectors, {"happy": 4.0}):
                got = forward(input_ids=ids).logits[:, -1]
            after = forward(input_ids=ids).logits[:, -1]
    finally:
        dynamo.reset()
    assert (expected - plain).norm() > 0.1 * plain.norm()  # steering moves the logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "where",
    ["all", "generated", "prompt", "mask"],
)
def test_steered_compiled_decoding_does_not_recompile(toy, where):
    """Compiled static-cache decoding (dynamo, eager backend) steered at every position, at
    the generated or prompt positions (absolute: ``prompt_length``) or at a boolean mask runs
    as one graph, as plain decoding does: the hook never reads the KV cache's length on the
    host (which broke the graph and recompiled at every step; a static cache now hands it
    over as a device tensor), and it steers exactly as eager decoding does."""
    import torch._dynamo as dynamo
    from transformers import CompileConfig

    from emovec.steering import steer

    lm, vectors, _ = toy
    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True  # transformers compiles decoding on accelerators only
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))

    def decode(**kwargs) -> tuple[torch.Tensor, int, int]:
        dynamo.reset()
        dynamo.utils.counters.clear()
        with torch.no_grad():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
                output_logits=True,
                return_dict_in_generate=True,
                **kwargs,
            )
        counters = dynamo.utils.counters
        graphs = int(counters["stats"].get("unique_graphs", 0))
        return out.logits[-1], graphs, int(sum(counters["graph_break"].values()))

    static = {"cache_implementation": "static", "compile_config": config}
    if where == "mask":  # the prompt's last 4 tokens and the 2nd and 3rd generated ones
        mask = torch.zeros(2, 22, dtype=torch.bool)
        mask[:, 12:16] = mask[:, 17:19] = True
        how = {"positions": mask}
    else:
        how = {"positions": where, "prompt_length": None if where == "all" else 16}
    try:
        plain, plain_graphs, _ = decode(**static)
        with steer(lm, vectors, {"happy": 2.0}, **how):
            steered, graphs, breaks = decode(**static)
            eager, _, _ = decode()
    finally:
        dynamo.reset()
    assert (graphs, breaks) == (plain_graphs, 0)
    torch.testing.assert_close(steered, eager, atol=1e-3, rtol=1e-3)
    assert (steered - plain).norm() > 1e-3 * plain.norm()  # the steering did something


def test_live_monitor_runs_compiled_decoding_as_one_graph_with_eager_scores(toy):
    """The monitor's hook needs no KV-cache length and reads no clock while compiled, so
    compiled static-cache decoding stays one graph; scores and tokens equal eager decoding's."""
    import torch._dynamo as dynamo
    from transformers import CompileConfig

    from emovec.monitor import LiveMonitor

    lm, vectors, _ = toy
    live = LiveMonitor(
        lm, vectors, bench_gpu.SIX, baseline=bench_gpu._baseline(lm, vectors), hidden=None, rules=()
    )
    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True  # transformers compiles decoding on accelerators only
    prompts = ["the cat sat on the mat and looked", "a dog"]
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "chat": False}
    eager = live.generate(prompts, **settings)
    dynamo.reset()
    dynamo.utils.counters.clear()
    try:
        compiled = live.generate(
            prompts, **settings, cache_implementation="static", compile_config=config
        )
        counters = dynamo.utils.counters
        graphs = int(counters["stats"].get("unique_graphs", 0))
        breaks = int(sum(counters["graph_break"].values()))
    finally:
        dynamo.reset()
    assert (graphs, breaks) == (1, 0)
    for got, want in zip(compiled, eager, strict=True):
        assert got.token_ids == want.token_ids and len(got.raw) == 6
        np.testing.assert_allclose(np.array(got.raw), np.array(want.raw), atol=1e-4)
