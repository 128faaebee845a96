"""Shared fixtures: the bundled model is loaded once, and small real vectors built once."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: A small but varied set of emotions for test vectors (happy/sad for steering checks).
TEST_EMOTIONS = [
    "happy",
    "sad",
    "angry",
    "afraid",
    "calm",
    "excited",
    "disgusted",
    "surprised",
    "proud",
    "ashamed",
    "lonely",
    "grateful",
    "bored",
    "nervous",
    "loving",
    "desperate",
]


@pytest.fixture(scope="session")
def lm():
    from emovec.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def corpus():
    from emovec.corpus import load_corpus

    return load_corpus("curated-v1")


@pytest.fixture(scope="session")
def small_corpus(corpus):
    from emovec.corpus import Corpus

    sub = corpus.subset(TEST_EMOTIONS)
    return Corpus(sub.stories, corpus.neutral[:48], "curated-test-subset")


@pytest.fixture(scope="session")
def vectors(lm, small_corpus):
    """Real vectors from the bundled model: 16 emotions, all layers, hold-out every 3rd story.

    Built with the study's method (dialogue denoising, mean readers): whitened readers need
    more stories than this 96-story subset has (4 training stories per emotion in 576
    dimensions); the default method is tested on its own in test_extraction.py."""
    from emovec.extraction import extract

    return extract(
        lm, small_corpus, holdout_every=3, batch_size=16, denoise="dialogues", reader="mean"
    )


@pytest.fixture(scope="session")
def vectors_file(vectors, tmp_path_factory):
    return vectors.save(tmp_path_factory.mktemp("vec") / "vectors.safetensors")


@pytest.fixture(scope="session")
def tiny_llama(lm):
    """A 2-layer, 32-wide random Llama sharing the bundled model's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(lm.tokenizer),
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def baseline_file(lm, vectors, tmp_path_factory):
    """A monitor baseline from 3 neutral dialogues (96 tokens each), stored once."""
    from emovec.monitor import calibrate

    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    calibrate(lm, vectors, limit=3, max_tokens=96, cache=path)
    return path


@pytest.fixture(scope="session")
def baseline(lm, vectors, baseline_file):
    """The same baseline, read back through the cache (calibration does not run again)."""
    from emovec.monitor import calibrate

    return calibrate(lm, vectors, limit=3, max_tokens=96, cache=baseline_file)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the ``emovec`` command in-process: ``run_cli(*args) -> (exit code, stdout, stderr)``."""
    from emovec.apps.cli import main

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["emovec", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
