"""Extraction on the bundled model, checked against transformers' own hidden states."""

import torch

from emovec.corpus import Corpus
from emovec.extraction import (
    ExtractionSettings,
    PooledPass,
    extract,
    finish_vectors,
    neutral_components,
    pooled_activations,
    pooling_weights,
)

TEXTS = [
    "The lighthouse keeper climbed the stairs again, counting each step out loud. " * 5,
    "A short note.",
    "Rain fell on the tin roof while the kettle started to whistle in the kitchen. " * 3,
]


def test_pooling_skips_the_first_49_tokens_and_halves_short_texts():
    w = pooling_weights(torch.tensor([80, 10]), 80, start_token=50)
    assert torch.all(w[0, :49] == 0) and torch.allclose(w[0, 49:], torch.full((31,), 1 / 31))
    assert torch.all(w[1, :5] == 0) and torch.allclose(w[1, 5:10], torch.full((5,), 0.2))
    assert torch.all(w[1, 10:] == 0)  # padding never counts
    torch.testing.assert_close(w.sum(1), torch.ones(2))


def test_pooled_means_match_hidden_states_reference(lm):
    layers = [0, 7, 20]
    pooled = pooled_activations(lm, TEXTS, layers)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([lm.encode(text)])
        with torch.no_grad():
            hs = lm.model(ids, output_hidden_states=True).hidden_states
        n = ids.shape[1]
        first = 49 if n >= 50 else n // 2
        for j, layer in enumerate(layers):
            ref = hs[layer + 1][0, first:n].mean(0)
            torch.testing.assert_close(pooled[i, j], ref, rtol=1e-4, atol=1e-4)


def test_batching_and_padding_do_not_change_the_means(lm):
    texts = TEXTS + ["Another line, of middling length, about the harbour at dawn. " * 2]
    one = pooled_activations(lm, texts, [5, 15], ExtractionSettings(batch_size=1))
    for size in (2, 4):
        many = pooled_activations(lm, texts, [5, 15], ExtractionSettings(batch_size=size))
        rel = (one - many).norm(dim=-1) / one.norm(dim=-1)
        assert float(rel.max()) <= 1e-5, size


def test_parallel_workers_give_the_same_means_in_order_and_leave_nothing_behind(lm):
    texts = TEXTS + ["Another line, of middling length, about the harbour at dawn. " * 2]
    settings = ExtractionSettings(batch_size=1)
    single = PooledPass(lm, [5, 15], settings, workers=1)
    expected = list(single.run(single.tokenize(texts)))
    threads = torch.get_num_threads()
    hooks_before = [len(layer._forward_hooks) for layer in lm.layers]
    double = PooledPass(lm, [5, 15], settings, workers=2)
    got = []
    for batch, pooled in double.run(double.tokenize(texts)):
        got.append((batch, pooled))
        # The consumer may use the model between batches: the pass's hooks leave it alone.
        with torch.no_grad():
            logits = lm.model(torch.tensor([lm.encode("A quiet street.")])).logits
        assert logits.shape[1] == len(lm.encode("A quiet street."))
    assert [b for b, _ in got] == [b for b, _ in expected]  # same batches, same order
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max()) <= 1e-5
    torch.testing.assert_close(double.mean_norm, single.mean_norm)
    assert double.tokens == single.tokens
    assert torch.get_num_threads() == threads
    assert [len(layer._forward_hooks) for layer in lm.layers] == hooks_before
    stopped = PooledPass(lm, [5, 15], settings, workers=2).run(double.tokenize(texts))
    next(stopped)
    stopped.close()  # a consumer that stops early: threads and hooks are restored at once
    assert torch.get_num_threads() == threads
    assert [len(layer._forward_hooks) for layer in lm.layers] == hooks_before


def test_neutral_components_explain_the_requested_variance():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 8, dtype=torch.float64) * torch.tensor([10, 5, 1, 1, 1, 1, 1, 1.0])
    scatter = torch.einsum("nli,nlj->lij", x, x)
    bases = neutral_components(scatter, x.sum(0), 200, 0.5)
    assert bases[0].shape == (8, 1)  # the first axis alone carries > 50%
    assert abs(abs(float(bases[0][0, 0])) - 1) < 0.05
    assert neutral_components(scatter, x.sum(0), 200, 0.0)[0].shape == (8, 0)


def test_vectors_are_centred_denoised_unit_vectors():
    sums = torch.randn(2, 3, 8, dtype=torch.float64)
    basis = torch.eye(8, dtype=torch.float64)[:, :1]
    vectors, grand = finish_vectors(sums, torch.ones(3, dtype=torch.float64), [basis, basis])
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2, 3))
    assert torch.all(vectors[..., 0].abs() < 1e-6)  # the neutral direction is projected out
    torch.testing.assert_close(grand, sums.mean(1).float())


def test_extracted_vectors_carry_their_provenance(vectors, small_corpus, lm):
    assert vectors.vectors.shape == (lm.n_layers, 16, lm.d_model)
    assert vectors.model["fingerprint"] == lm.fingerprint
    assert vectors.corpus["hash"] == small_corpus.hash
    assert vectors.params["start_token"] == 50 and vectors.params["neutral_variance"] == 0.5
    assert len(vectors.residual_norm) == lm.n_layers and float(vectors.residual_norm.min()) > 0
    assert vectors.params["denoise"] == "dialogues" and vectors.params["reader"] == "mean"
    assert max(vectors.metrics["neutral_components"]) >= 1 and vectors.readers is None
    rel = vectors.metrics["reliability"]
    assert rel["split"] == "alternate" and len(rel["vector"]) == lm.n_layers


def test_the_default_method_is_whitened_without_denoising(lm, small_corpus):
    """The defaults chosen in docs/fidelity.md: no denoising, whitened reading directions
    with shrinkage 0.9."""
    trio = Corpus(small_corpus.subset(["happy", "sad", "calm"]).stories, [], "trio")
    vec = extract(lm, trio, layers=[5, 9], cache=False)
    assert vec.params["denoise"] == "none" and vec.params["reader"] == "whitened"
    assert vec.params["shrinkage"] == 0.9  # the rule's choice over 0.1-0.9
    assert vec.metrics["neutral_components"] == [0, 0]
    assert vec.readers is not None and vec.readers.shape == vec.vectors.shape
    torch.testing.assert_close(vec.readers.norm(dim=-1), torch.ones(2, 3))
    assert not torch.allclose(vec.readers, vec.vectors)


def test_the_studys_method_stays_available(lm, small_corpus):
    pair = Corpus(
        small_corpus.subset(["happy", "sad", "calm"]).stories, small_corpus.neutral[:12], "p"
    )
    study = extract(lm, pair, layers=[6], denoise="dialogues", reader="mean")
    assert study.metrics["neutral_components"][0] >= 1 and study.readers is None
    assert study.params["denoise"] == "dialogues" and study.params["reader"] == "mean"
    torch.testing.assert_close(study.reading_directions(6), study.vectors[0])


def test_held_out_stories_are_classified_far_above_chance(vectors):
    held = vectors.metrics["heldout"]
    chance = held["chance_top1"]
    assert held["n_heldout"] == 32  # every 3rd of 6 stories, 16 emotions
    best = max(held["top1"])
    assert best >= 5 * chance, held["top1"]
    i = vectors.layers.index(vectors.default_layer)
    assert held["top1"][i] == best  # the default layer is the measured best


def test_extraction_without_denoising_or_neutral_texts(lm, small_corpus):
    pair = small_corpus.subset(["happy", "sad"]).stories
    tiny = Corpus(pair[:2] + pair[-2:], [], "tiny")
    vec = extract(lm, tiny, layers=[3, 9], neutral_variance=0.0)
    assert vec.layers == [3, 9] and vec.metrics["neutral_components"] == [0, 0]
    # Two stories per emotion leave none to hold out, so the default is the layer nearest
    # two-thirds of the model's depth (29 * 2/3 = 19.3 -> 9 of [3, 9]), not a measured best.
    assert "heldout" not in vec.metrics or not vec.metrics["heldout"].get("n_heldout")
    assert vec.default_layer == 9


def test_main_job_plots_held_out_accuracy(vectors, tmp_path):
    from emovec.apps.pipeline import plot_heldout

    path = tmp_path / "heldout.png"
    plot_heldout(vectors.metrics["heldout"], vectors.default_layer, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pooled_cache_skips_the_model_and_gives_the_same_vectors(lm, small_corpus, tmp_path):
    from emovec.activation_cache import PooledCache

    tiny = Corpus(
        small_corpus.subset(["happy", "sad", "calm"]).stories, small_corpus.neutral[:6], "t"
    )
    cold = extract(lm, tiny, layers=[4, 12], cache=tmp_path, batch_size=4, denoise="dialogues")
    assert cold.metrics["cached_texts"] == 0
    folder = PooledCache.for_model(lm, root=tmp_path).folder
    assert len(list(folder.glob("shard-*.safetensors"))) >= 1

    calls = []
    handle = lm.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:  # other method settings and a subset of layers: every text comes from the cache
        warm = extract(lm, tiny, layers=[12], cache=tmp_path, neutral_variance=0.0)
        again = extract(lm, tiny, layers=[4, 12], cache=tmp_path, batch_size=4, denoise="dialogues")
    finally:
        handle.remove()
    # (no denoising: the neutral texts are not needed, so not even read)
    assert calls == [] and warm.metrics["cached_texts"] == len(tiny.stories)
    torch.testing.assert_close(again.vectors, cold.vectors, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.residual_norm, cold.residual_norm)
    direct = extract(lm, tiny, layers=[12], neutral_variance=0.0)
    torch.testing.assert_close(warm.vectors, direct.vectors, rtol=1e-5, atol=1e-5)

    # A torn shard (a run killed mid-write leaves only *.tmp, but be robust to worse) is
    # ignored: its texts are recomputed, and a grown corpus runs only the new texts.
    next(folder.glob("shard-*.safetensors")).write_bytes(b"not a shard")
    grown = Corpus(
        small_corpus.subset(["happy", "sad", "calm", "bored"]).stories, tiny.neutral, "g"
    )
    vec = extract(lm, grown, layers=[4, 12], cache=tmp_path, denoise="dialogues")
    assert 6 <= vec.metrics["cached_texts"] <= 18  # never the torn shard's or bored's texts


def test_python_extract_uses_the_activation_cache_by_default(
    lm, small_corpus, tmp_path, monkeypatch
):
    import inspect

    assert inspect.signature(extract).parameters["cache"].default is True
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path))
    stories = small_corpus.subset(["happy", "sad"]).stories
    pair = Corpus(stories[:2] + stories[-2:], [], "p")
    extract(lm, pair, layers=[2], neutral_variance=0.0)
    again = extract(lm, pair, layers=[2], neutral_variance=0.0)
    assert again.metrics["cached_texts"] == 4
    off = extract(lm, pair, layers=[2], neutral_variance=0.0, cache=False)
    assert off.metrics["cached_texts"] == 0


def test_the_default_models_prebuilt_vectors_fit_the_main_job(lm, monkeypatch, tmp_path):
    from rich.console import Console

    from emovec.apps import pipeline
    from emovec.corpus import load_corpus

    corpus = load_corpus("curated")
    shipped = pipeline.bundled_vectors(lm, corpus)
    assert shipped is not None and shipped.corpus["hash"] == corpus.hash
    assert (
        shipped.params["holdout_every"] == pipeline.MAIN_HOLDOUT
        and "reliability" in shipped.metrics
    )
    path = tmp_path / "vectors.safetensors"
    used = pipeline.build_or_reuse(lm, path, rebuild=False, console=Console(file=None, quiet=True))
    torch.testing.assert_close(used.vectors, shipped.vectors, rtol=0, atol=0)
    assert path.is_file()
    # another method than the main job's: the shipped file no longer fits
    monkeypatch.setattr(pipeline, "MAIN_HOLDOUT", 3)
    assert pipeline.bundled_vectors(lm, corpus) is None


def test_pooled_cache_flushes_by_age_as_well_as_by_count(tmp_path):
    """A slow model fills 256 rows in an hour; a run killed then must not lose all of them."""
    from emovec.activation_cache import PooledCache

    def put(cache: PooledCache, key: str) -> None:
        cache.put([key], [0, 1], torch.ones(2, 1, 4), torch.ones(2, 1), torch.tensor([3]))

    patient = PooledCache(tmp_path / "patient", flush_every=100, flush_seconds=3600)
    put(patient, "a")
    put(patient, "b")
    assert not list(patient.folder.glob("shard-*"))  # neither full nor old: still buffered

    eager = PooledCache(tmp_path / "eager", flush_every=100, flush_seconds=0)
    put(eager, "a")
    put(eager, "b")
    assert len(list(eager.folder.glob("shard-*.safetensors"))) == 2
    reopened = PooledCache(tmp_path / "eager")
    assert reopened.has("a", [0, 1]) and reopened.has("b", [1])
    pooled, norms, counts = reopened.get(["b"], [1])
    assert pooled.shape == (1, 1, 4) and int(counts[0]) == 3
