"""Token-by-token reading on the bundled model."""

import json

import numpy as np
import pytest
import torch

from emovec.reading import read, residuals
from emovec.vectors import VectorFileError


def test_reading_scores_every_token_against_every_emotion(lm, vectors):
    r = read(lm, vectors, "She laughed and hugged everyone in the room.")
    assert r.scores.shape == (len(r.tokens), len(vectors.emotions))
    assert "".join(r.tokens) == "She laughed and hugged everyone in the room."
    assert np.all(np.abs(r.scores) <= 1 + 1e-5)
    assert r.layer == vectors.default_layer
    payload = json.loads(json.dumps(r.to_dict()))
    assert set(payload) >= {"tokens", "emotions", "scores", "mean"}
    assert len(payload["scores"]) == len(r.tokens)
    assert len(payload["scores"][0]) == len(r.emotions)
    assert "<span" in r._repr_html_()


def test_scores_equal_cosine_with_the_centred_residual(lm, vectors):
    layer = 10
    r = read(lm, vectors, "The dog waited by the door all evening.", layer=layer)
    hidden = residuals(lm, lm.encode(r.text), [layer])[layer]
    row = vectors.layer_index(layer)
    x = hidden - vectors.mean_activation[row]
    expected = torch.nn.functional.cosine_similarity(
        x.unsqueeze(1), vectors.reading_directions(layer).unsqueeze(0), dim=-1
    )
    np.testing.assert_allclose(r.scores, expected.numpy(), atol=1e-5)
    raw = read(lm, vectors, "The dog waited by the door all evening.", layer=layer, center=False)
    assert not np.allclose(raw.scores, r.scores)


def test_chat_reading_ends_at_the_assistant_turn(lm, vectors):
    r = read(lm, vectors, "My dog died this morning.", chat=True)
    assert r.text.endswith("<|im_start|>assistant\n")
    assert "My dog died this morning." in r.text
    assert len(r.last) == len(vectors.emotions)


def test_emotion_subset_and_order(lm, vectors):
    r = read(lm, vectors, "A quiet afternoon.", emotions=["Sad", "happy"])
    assert r.emotions == ["sad", "happy"] and r.scores.shape[1] == 2


def test_readings_separate_clear_emotional_texts(lm, vectors):
    joy = read(lm, vectors, "They won! She jumped up, laughing, and threw her arms around him.")
    grief = read(
        lm, vectors, "At the funeral he stood by the coffin, tears falling, unable to speak."
    )
    assert joy.mean["happy"] - joy.mean["sad"] > grief.mean["happy"] - grief.mean["sad"]


def test_bad_input_to_read(lm, vectors):
    with pytest.raises(ValueError, match="empty text"):
        read(lm, vectors, "   ")
    with pytest.raises(VectorFileError, match="layer 31"):
        read(lm, vectors, "hello", layer=31)
    with pytest.raises(ValueError, match="hapy"):
        read(lm, vectors, "hello", emotions=["hapy"])


def test_summary_pools_like_extraction_and_skips_the_chat_template(lm, vectors):
    from emovec.reading import POOLS

    long_text = " ".join(["The committee met on Tuesday and went through the agenda."] * 8)
    r = read(lm, vectors, long_text)
    n = len(r.tokens)
    assert n >= 60
    start = vectors.params["start_token"]
    np.testing.assert_allclose(
        r.summary("extraction"), r.scores[start - 1 :].mean(axis=0), rtol=1e-6
    )
    np.testing.assert_allclose(r.summary("all"), r.scores.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(r.summary("last"), r.scores[-1], rtol=1e-6)
    short = read(lm, vectors, "She smiled at the letter.")
    half = len(short.tokens) // 2
    np.testing.assert_allclose(
        short.summary("extraction"), short.scores[half:].mean(axis=0), rtol=1e-6
    )

    chat = read(lm, vectors, "My dog died this morning.", chat=True, pool="all")
    lo, hi = chat.span
    assert "".join(chat.tokens[lo:hi]).strip() == "My dog died this morning."
    np.testing.assert_allclose(chat.summary(), chat.scores[lo:hi].mean(axis=0), rtol=1e-6)
    assert chat.to_dict()["span"] == [lo, hi] and chat.to_dict()["pool"] == "all"
    with pytest.raises(ValueError) as info:
        read(lm, vectors, "hello", pool="median")
    assert "median" in str(info.value) and all(p in str(info.value) for p in POOLS)
