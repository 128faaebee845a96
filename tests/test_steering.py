"""Steering on the bundled model: exact arithmetic, cache and batch invariance, clean exit."""

import pytest
import torch

from emovec.generation import generate
from emovec.reading import residuals
from emovec.steering import steer, steering_direction


def test_steering_adds_strength_times_norm_times_unit_vector(lm, vectors):
    layer, ids = 12, lm.encode("The train left the station on time.")
    before = residuals(lm, ids, [layer])[layer]
    with steer(lm, vectors, {"happy": 0.5, "sad": -0.25}, layers=[layer]):
        after = residuals(lm, ids, [layer])[layer]
    expected = 0.5 * vectors.norm_at(layer) * vectors.vector("happy", layer)
    expected -= 0.25 * vectors.norm_at(layer) * vectors.vector("sad", layer)
    torch.testing.assert_close(after - before, expected.expand_as(before), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        steering_direction(vectors, {"happy": 0.5, "sad": -0.25}, layer), expected
    )


def test_hooks_are_removed_after_an_error(lm, vectors):
    # transformers may keep hooks of its own (hidden-state collection); only ours must go
    before = [dict(layer._forward_hooks) for layer in lm.layers]
    with pytest.raises(RuntimeError, match="inside"), steer(lm, vectors, {"happy": 1.0}):
        assert [dict(layer._forward_hooks) for layer in lm.layers] != before
        raise RuntimeError("error inside the block")
    assert [dict(layer._forward_hooks) for layer in lm.layers] == before


def test_steering_changes_generation_and_is_undone_on_exit(lm, vectors):
    prompt = "Describe your weekend."
    plain = generate(lm, prompt, max_new_tokens=12)
    with steer(lm, vectors, {"sad": 0.8}):
        steered = generate(lm, prompt, max_new_tokens=12)
    assert steered != plain
    assert generate(lm, prompt, max_new_tokens=12) == plain


def test_kv_cache_and_no_cache_give_the_same_steered_text(lm, vectors):
    prompt = "Write about a lighthouse."
    with steer(lm, vectors, {"happy": 0.4}):
        cached = generate(lm, prompt, max_new_tokens=10)
        uncached = generate(lm, prompt, max_new_tokens=10, use_cache=False)
    assert cached == uncached


def test_batched_padded_generation_matches_one_by_one(lm, vectors):
    prompts = ["Hi.", "Tell me a long story about a fox who lived near a quiet river."]
    with steer(lm, vectors, {"angry": 0.4}):
        batched = generate(lm, prompts, max_new_tokens=8)
        single = [generate(lm, p, max_new_tokens=8) for p in prompts]
    assert batched == single


def test_prompt_and_generated_positions(lm, vectors):
    layer, ids = 12, lm.encode("One two three four five six")
    base = residuals(lm, ids, [layer])[layer]
    mask = torch.zeros(1, len(ids), dtype=torch.bool)
    mask[0, 2:4] = True
    with steer(lm, vectors, {"happy": 0.5}, layers=[layer], positions=mask):
        masked = residuals(lm, ids, [layer])[layer]
    changed = (masked - base).norm(dim=-1) > 1e-3
    assert changed.tolist() == mask[0].tolist()
    with steer(lm, vectors, {"happy": 0.5}, layers=[layer], positions="generated", prompt_length=4):
        gen = residuals(lm, ids, [layer])[layer]
    assert ((gen - base).norm(dim=-1) > 1e-3).tolist() == [False] * 4 + [True] * (len(ids) - 4)
    # "prompt" without a prompt length: every position of a multi-token pass is steered.
    with steer(lm, vectors, {"happy": 0.5}, layers=[layer], positions="prompt"):
        prompt_pass = residuals(lm, ids, [layer])[layer]
    assert ((prompt_pass - base).norm(dim=-1) > 1e-3).all()
    torch.testing.assert_close(prompt_pass, masked_all(lm, vectors, ids, layer), atol=1e-5, rtol=0)


def test_bad_steering_input(lm, vectors):
    with pytest.raises(ValueError, match="hapy"), steer(lm, vectors, {"hapy": 1.0}):
        pass
    with pytest.raises(ValueError, match="layer 40"), steer(lm, vectors, {"happy": 1}, layers=[40]):
        pass
    with (
        pytest.raises(ValueError, match="positions"),
        steer(lm, vectors, {"happy": 1}, positions="middle"),
    ):
        pass
    with pytest.raises(ValueError, match="empty prompt"):
        generate(lm, "  ")


def test_happy_vs_sad_steering_moves_sentiment_as_judged_by_vader(lm, vectors):
    from emovec.experiments.steering_sentiment import steering_sentiment

    result = steering_sentiment(lm, vectors, strength=0.5, samples_per_prompt=2, max_new_tokens=24)
    assert result.n_per_condition == 16
    assert result.mean_sentiment["+happy"] > result.mean_sentiment["+sad"]
    assert result.p_value < 0.05, result.mean_sentiment


def masked_all(lm, vectors, ids, layer):
    """The residual with every position marked in an explicit mask (same steering)."""
    mask = torch.ones(1, len(ids), dtype=torch.bool)
    with steer(lm, vectors, {"happy": 0.5}, layers=[layer], positions=mask):
        return residuals(lm, ids, [layer])[layer]
