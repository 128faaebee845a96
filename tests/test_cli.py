"""The command line: real commands, and one clear line plus a non-zero exit for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_info_json_describes_the_file(vectors_file, run_cli):
    code, out, _ = run_cli("info", vectors_file, "--json")
    assert code == 0
    meta = json.loads(out)
    assert {"emotions", "layers", "default_layer", "d_model", "model"} <= set(meta)
    assert meta["model"]["name"] == "smollm2-135m-instruct"


def test_read_json_output(vectors_file, run_cli):
    code, out, _ = run_cli(
        "read",
        "--vectors",
        vectors_file,
        "--json",
        "--chat",
        "I lost my keys again.",
    )
    assert code == 0
    data = json.loads(out)
    assert len(data["scores"]) == len(data["tokens"])
    assert len(data["scores"][0]) == len(data["emotions"]) == len(data["mean"])


def test_read_pretty_and_steer_commands_run(vectors_file, tmp_path, run_cli):
    text_file = tmp_path / "t.txt"
    text_file.write_text("The storm tore the roof away and she screamed.")
    code, out, _ = run_cli("read", "-v", vectors_file, "--file", text_file)
    assert code == 0 and "pooled" in out
    code, out, _ = run_cli(
        "steer",
        "-v",
        vectors_file,
        "-e",
        "happy",
        "-s",
        "0.5",
        "-e",
        "sad",
        "-s",
        "-0.2",
        "--max-new-tokens",
        "8",
        "Hello.",
    )
    assert code == 0 and "unsteered:" in out and "steered (happy +0.5, sad -0.2)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["steer", "-v", "{vec}", "-e", "hapy", "-s", "1", "hi"], "unknown emotion 'hapy'"),
        (["read", "-v", "{vec}", "--layer", "45", "hi"], "layer 45 is not in this vector file"),
        (["read", "-v", "{vec}", "   "], "empty text"),
        (["read", "-v", "{bad}", "hi"], "corrupted"),
        (["read", "-v", "{vec}", "--model", "no/such-model-here", "hi"], "could not load model"),
        (["read", "-v", "{vec}", "--model", "./missing.gguf", "hi"], "GGUF file not found"),
        (["info", "{missing}"], "vector file not found"),
        (
            ["experiment", "implicit", "-v", "{vec}", "--position", "middle", "-o", "{tmp}/i"],
            "unknown position 'middle': choose one of message, reply-start",
        ),
        (["extract", "--out", "{tmp}/x.safetensors", "--corpus", "{tmp}/none"], "corpus not found"),
        (
            ["steer", "-v", "{vec}", "-e", "happy", "-e", "sad", "-s", "1", "hi"],
            "one --strength for each --emotion",
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(
    monkeypatch, vectors_file, tmp_path, args, message, run_cli
):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(vectors_file.read_bytes()[:500])
    subs = {
        "{vec}": vectors_file,
        "{bad}": bad,
        "{missing}": tmp_path / "gone.safetensors",
        "{tmp}": tmp_path,
    }

    def fill(a):
        for key, value in subs.items():
            a = a.replace(key, str(value))
        return a

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(*[fill(a) for a in args])
    assert code != 0
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_vectors_for_another_model_are_refused(vectors, tmp_path, run_cli):
    import copy

    foreign = copy.deepcopy(vectors)
    foreign.model = dict(vectors.model, name="other-model", fingerprint="0" * 16)
    path = foreign.save(tmp_path / "foreign.safetensors")
    code, _, err = run_cli("read", "-v", path, "--model", "smollm2-135m-instruct", "hi")
    assert code == 2
    assert "belong to model 'other-model'" in err


def test_console_script_is_installed_and_lists_models():
    script = Path(sys.executable).parent / "emovec"
    result = subprocess.run([script, "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout and "gemma3-270m" in result.stdout


def test_version_flag_prints_the_version(run_cli):
    from emovec import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"emovec {__version__}"


def test_hub_id_with_the_hub_unreachable_fails_fast(monkeypatch, tmp_path, run_cli):
    import time

    import transformers  # noqa: F401 - imported before the clock starts

    from emovec import models

    probes = []

    def unreachable(address, timeout=models.HUB_PROBE_TIMEOUT):
        probes.append(address)
        return "[Errno 101] Network is unreachable (simulated)"

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(models, "_probe_hub", unreachable)
    monkeypatch.setattr(models, "_hub_probes", {})
    started = time.perf_counter()
    code, _, err = run_cli("extract", "-o", tmp_path / "v.safetensors", "-m", "nobody/nothing")
    with pytest.raises(models.ModelError, match="unreachable") as caught:
        models.load_model("nobody/other")  # a second hub model: no second probe
    assert time.perf_counter() - started < 5
    assert code == 2 and "Traceback" not in err
    message = " ".join(err.split())
    assert "could not load model 'nobody/nothing'" in message
    assert "HF_HUB_OFFLINE=1" in message and "Network is unreachable (simulated)" in message
    for alternative in ("smollm2-135m-instruct", "local model folder", ".gguf file"):
        assert alternative in message and alternative in str(caught.value)
    assert probes == [("huggingface.co", 443)]


def test_hub_model_in_the_local_cache_loads_offline(monkeypatch, lm):
    """Offline, a hub id is looked up in the local cache only (no retries, no probe with
    HF_HUB_OFFLINE=1 set)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emovec import models

    calls = []

    def cached(result):
        def from_pretrained(name, **kwargs):
            calls.append(kwargs.get("local_files_only"))
            return result

        return from_pretrained

    def no_probe(*_args, **_kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 must not probe the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_probe_hub", no_probe)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", cached(lm.tokenizer))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", cached(lm.model))
    loaded = models.load_model("owner/cached-model")
    assert loaded.source == "hub" and loaded.n_layers == lm.n_layers
    assert calls == [True, True]


def test_experiment_all_reports_skipped_experiments(monkeypatch, lm, vectors, tmp_path, run_cli):
    import emovec.experiments as experiments
    from emovec.apps.cli import experiments as commands
    from emovec.experiments import AllResults, skipped_section

    def fake_run_all(_lm, vecs, out_dir, _settings, log=print, **_options):
        results = AllResults()
        results.skipped["sweeps"] = "the severity sweeps needs emotions the vector file lacks: x"
        skipped_section(results.skipped, vecs).save(Path(out_dir) / "skipped")
        return results

    monkeypatch.setattr(experiments, "run_all", fake_run_all)
    monkeypatch.setattr(commands, "vectors_and_model", lambda _v, _m: (vectors, lm))
    out = tmp_path / "exp"
    code, stdout, err = run_cli("experiment", "all", "-v", "v", "-o", out)
    assert code == 0, err
    assert "skipped 1 of 1 experiments" in " ".join(err.split())
    page = (out / "report.html").read_text()
    assert "Experiments skipped" in page and "lacks: x" in page


def test_info_prints_file_text_as_plain_text(vectors, tmp_path, run_cli):
    from dataclasses import replace

    hostile = replace(vectors, model={**vectors.model, "name": "evil[/][bold red]x"})
    path = hostile.save(tmp_path / "markup.safetensors")
    code, out, _ = run_cli("info", path)
    assert code == 0 and "evil[/][bold red]x" in out


def test_monitor_says_when_it_calibrates_and_ends_its_summary_on_its_own_line(
    monkeypatch, vectors_file, tmp_path
):
    import re

    from typer.testing import CliRunner

    from emovec.apps.cli import app
    from emovec.models import cache_dir

    cache = tmp_path / "cache"  # no baseline cached yet; the model's own files are shared
    cache.mkdir()
    for kind in ("dense", "gguf"):
        (cache_dir() / kind).mkdir(parents=True, exist_ok=True)
        (cache / kind).symlink_to(cache_dir() / kind)
    monkeypatch.setenv("EMOVEC_CACHE", str(cache))
    texts = tmp_path / "calibration.txt"
    texts.write_text(
        "We met at noon to go over the schedule for the week.\n\n"
        "The report lists the figures for each month and the totals at the end."
    )
    args = ["monitor", "-v", str(vectors_file), "Tell me about tea.", "-e", "calm"]
    args += ["--calibrate-texts", str(texts), "--max-new-tokens", "3"]
    args += ["--trace", str(tmp_path / "t.jsonl")]
    first = CliRunner().invoke(app, args)  # live view on, but the output is not a terminal
    assert first.exit_code == 0, first.output
    announced = [x for x in first.stderr.splitlines() if x.startswith("calibrating the z-score")]
    assert len(announced) == 1, first.stderr
    assert "on 2 texts of" in announced[0] and "roughly" in announced[0]
    assert re.search(r"^no alerts$", first.stdout, re.M), first.stdout
    assert re.search(r"^\d+ tokens, stopped by length", first.stdout, re.M), first.stdout
    again = CliRunner().invoke(app, args)  # cached now: nothing to announce
    assert again.exit_code == 0 and "calibrating" not in again.output
    assert f"overwriting {tmp_path / 't.jsonl'}" in again.stderr


def test_monitor_never_overwrites_its_default_trace(
    monkeypatch, vectors_file, baseline_file, tmp_path
):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    monkeypatch.chdir(tmp_path)
    args = ["monitor", "-v", str(vectors_file), "Hi.", "-e", "calm", "--no-live"]
    args += ["--baseline", str(baseline_file), "--max-new-tokens", "2"]
    Path("emovec-trace.jsonl").write_text("an earlier trace\n")
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert Path("emovec-trace.jsonl").read_text() == "an earlier trace\n"
    assert "trace: emovec-trace-2.jsonl" in first.stdout
    second = CliRunner().invoke(app, args)
    assert "trace: emovec-trace-3.jsonl" in second.stdout
    assert Path("emovec-trace-3.jsonl").stat().st_size > 0


def test_models_lists_each_recommended_steering_strength(run_cli):
    code, out, _ = run_cli("models")
    assert code == 0 and "strength: what `emovec steer` uses without -s" in " ".join(out.split())
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    assert " 0.5 " in rows["smollm2-135m-instruct"] and " 0.15 " in rows["gemma3-270m"]


def test_steer_without_a_strength_uses_the_models_own(monkeypatch, vectors_file, run_cli):
    import dataclasses

    from emovec import models

    assert models.recommended_strength("gemma3-270m") == 0.15
    assert models.recommended_strength("some/other-model") == models.DEFAULT_STEER_STRENGTH
    args = ["steer", "-v", vectors_file, "-e", "happy", "--max-new-tokens", "3", "--no-compare"]
    code, out, err = run_cli(*args, "Hello.")
    assert code == 0 and "steered (happy +0.5)" in out, err
    assert "strength 0.5 for each emotion (recommended for smollm2-135m-instruct" in err
    gentler = dataclasses.replace(models.BUILTIN["smollm2-135m-instruct"], steer_strength=0.2)
    monkeypatch.setitem(models.BUILTIN, "smollm2-135m-instruct", gentler)
    code, out, _ = run_cli(*args, "Hello.")
    assert code == 0 and "steered (happy +0.2)" in out


def test_known_errors_are_one_red_line_and_exit_status_2(monkeypatch, tmp_path, run_cli):
    from emovec.vectors import EmotionVectors

    code, out, err = run_cli("info", tmp_path / "gone.safetensors")
    assert code == 2 and out == ""
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert err.startswith("error: ") and "vector file not found" in err

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(EmotionVectors, "load", staticmethod(denied))
    code, _, err = run_cli("info", tmp_path / "locked.safetensors")
    assert code == 2 and "Traceback" not in err
    assert " ".join(err.split()) == f"error: {tmp_path / 'locked.safetensors'}: Permission denied"


def test_debug_shows_the_traceback_of_a_known_error(tmp_path):
    missing = tmp_path / "gone.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "emovec", "--debug", "info", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in result.stderr
    assert "VectorFileError" in result.stderr and "vector file not found" in result.stderr


def test_a_bug_keeps_its_traceback_instead_of_a_user_error_line(
    monkeypatch, capsys, tmp_path, run_cli
):
    from emovec.vectors import EmotionVectors

    def broken(path):
        raise ValueError("boom")

    monkeypatch.setattr(EmotionVectors, "load", staticmethod(broken))
    with pytest.raises(ValueError, match="boom"):
        run_cli("info", tmp_path / "any.safetensors")
    assert "error:" not in capsys.readouterr().err
