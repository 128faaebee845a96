"""Sharded extraction: shards merged in order give the single-process vector file exactly.

Exactness is about the sums: given the same pooled activations (here: the activation cache
the single process filled), shards merged in any order give the same file bit for bit. A
shard that runs the model itself batches its texts differently, and a float32 forward pass
depends on batch composition at the level of rounding, so that file agrees within 1e-5."""

import json

import pytest
import torch
from typer.testing import CliRunner

from emovec.extraction import accumulate, extract, finish
from emovec.sharding import (
    ShardError,
    load_partial,
    merge,
    merge_files,
    parse_shard,
    save_partial,
)
from emovec.vectors import EmotionVectors

#: Dialogue denoising and whitened readers: every kind of sum a shard keeps is exercised.
SETTINGS = dict(layers=[3, 5], holdout_every=3, denoise="dialogues", reader="whitened")


def assert_same(a: EmotionVectors, b: EmotionVectors) -> None:
    assert a.emotions == b.emotions and a.layers == b.layers
    assert torch.equal(a.vectors, b.vectors)
    assert torch.equal(a.readers, b.readers)
    assert torch.equal(a.mean_activation, b.mean_activation)
    assert torch.equal(a.residual_norm, b.residual_norm)
    assert a.default_layer == b.default_layer
    assert a.metrics["heldout"] == b.metrics["heldout"]
    assert a.metrics["reliability"] == b.metrics["reliability"]
    assert a.metrics["geometry"] == b.metrics["geometry"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("pooled-cache")


@pytest.fixture(scope="module")
def single(lm, small_corpus, shared_cache):
    """The single-process file; its pass fills the activation cache the shards then share."""
    return extract(lm, small_corpus, cache=shared_cache, **SETTINGS)


def test_two_shards_merge_into_the_single_process_file(
    lm, small_corpus, single, shared_cache, tmp_path
):
    parts = [
        accumulate(lm, small_corpus, cache=shared_cache, shard=(i, 2), **SETTINGS) for i in (1, 0)
    ]
    assert {p.shard for p in parts} == {(0, 2), (1, 2)}
    assert all(p.cached_texts > 0 and p.tokens == 0 for p in parts)  # the model never ran
    assert sum(p.n_neutral for p in parts) == len(small_corpus.neutral_texts())
    paths = [save_partial(p, tmp_path / f"part{p.shard[0]}.safetensors") for p in parts]
    assert_same(merge_files(paths), single)


def test_shards_that_run_the_model_agree_within_rounding(lm, small_corpus, single):
    parts = [accumulate(lm, small_corpus, cache=False, shard=(i, 2), **SETTINGS) for i in (0, 1)]
    merged = finish(merge(parts))
    torch.testing.assert_close(merged.vectors, single.vectors, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.readers, single.readers, atol=1e-4, rtol=0)
    assert merged.metrics["tokens"] == single.metrics["tokens"] > 0


def test_merge_refuses_gaps_duplicates_and_mixed_settings(lm, small_corpus, shared_cache, single):
    cache = shared_cache
    three = [accumulate(lm, small_corpus, cache=cache, shard=(i, 3), **SETTINGS) for i in (0, 1)]
    with pytest.raises(ShardError, match=r"shards of 3: missing \[2\]"):
        merge(three)
    with pytest.raises(ShardError, match=r"duplicated \[0\]"):
        merge([three[0], three[0], three[1]])
    other = accumulate(
        lm, small_corpus, cache=cache, shard=(2, 3), **{**SETTINGS, "reader": "mean"}
    )
    with pytest.raises(ShardError, match="settings differ in reader"):
        merge([*three, other])
    two = accumulate(lm, small_corpus, cache=cache, shard=(1, 2), **SETTINGS)
    with pytest.raises(ShardError, match="mixed shard counts: 3 and 2"):
        merge([three[0], two])
    with pytest.raises(ShardError, match="no partial files"):
        merge([])


def test_bad_shard_text_and_files_get_one_clear_error(tmp_path, vectors_file):
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(ShardError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ShardError, match="not an emovec partial file"):
        load_partial(vectors_file)
    with pytest.raises(ShardError, match="not found"):
        load_partial(tmp_path / "missing.safetensors")


def test_cli_shards_and_merge(lm, small_corpus, single, shared_cache, tmp_path, monkeypatch):
    from emovec.apps.cli import app

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for name, records in (("stories", small_corpus.stories), ("neutral", small_corpus.neutral)):
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (corpus_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    # The model's own cache as it is, with the pooled activations the single process left.
    from emovec.models import cache_dir

    home = tmp_path / "emovec-cache"
    home.mkdir()
    for name in ("dense", "gguf"):
        if (cache_dir() / name).exists():
            (home / name).symlink_to(cache_dir() / name)
    (home / "pooled").symlink_to(shared_cache)
    monkeypatch.setenv("EMOVEC_CACHE", str(home))
    args = ["--corpus", str(corpus_dir), "--layers", "3,5", "--holdout-every", "3"]
    args += ["--denoise", "dialogues", "--reader", "whitened"]
    runner = CliRunner()
    for i in (0, 1):
        part = tmp_path / f"p{i}.safetensors"
        result = runner.invoke(app, ["extract", *args, "--shard", f"{i}/2", "-o", str(part)])
        assert result.exit_code == 0, result.output
        assert "wrote partial" in result.output
    out = tmp_path / "merged.safetensors"
    result = runner.invoke(
        app,
        [
            "merge",
            str(tmp_path / "p0.safetensors"),
            str(tmp_path / "p1.safetensors"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert_same(EmotionVectors.load(out), single)
    result = runner.invoke(app, ["merge", str(tmp_path / "p0.safetensors"), "-o", str(out)])
    assert result.exit_code != 0 and "missing [1]" in result.output


def test_ray_local_cluster_with_two_shards_equals_single_process(
    small_corpus, single, shared_cache
):
    pytest.importorskip("ray", reason="pip install 'emovec[ray]'")
    from emovec.extraction import ExtractionSettings
    from emovec.sharding import extract_on_ray

    merged = extract_on_ray(
        "smollm2-135m-instruct",
        small_corpus,
        2,
        ExtractionSettings(**SETTINGS),
        cache=str(shared_cache),
    )
    assert_same(merged, single)
