"""Live monitoring: scores arrive per forward pass and equal a later reading of the text."""

import numpy as np
import pytest

from emovec.monitor import Monitor, monitored_generate
from emovec.reading import read
from emovec.vectors import VectorFileError


def test_monitor_scores_equal_reading_the_finished_text(lm, vectors):
    arrivals = []
    ids, scores, monitor = monitored_generate(
        lm,
        vectors,
        "Describe a rainy afternoon.",
        max_new_tokens=10,
        callback=lambda offset, s: arrivals.append((offset, s.shape)),
    )
    # one prefill pass, then one pass per generated token that was fed back
    assert arrivals[0][0] == 0 and [a[1][1] for a in arrivals[1:]] == [1] * (len(arrivals) - 1)
    assert scores.shape == (len(ids) - 1, len(vectors.emotions))
    text = lm.tokenizer.decode(ids[:-1])
    reading = read(lm, vectors, text)
    assert lm.encode(text) == ids[:-1]
    np.testing.assert_allclose(scores, reading.scores, atol=2e-4)


def test_monitor_restricted_emotions_and_hooks_removed(lm, vectors):
    before = [dict(layer._forward_hooks) for layer in lm.layers]
    monitor = Monitor(lm, vectors, emotions=["sad", "Happy"], layer=10)
    with monitor.watching():
        lm.model(**lm.tokenizer("A grey day.", return_tensors="pt"))
    assert monitor.emotions == ["sad", "happy"] and monitor.scores().shape[2] == 2
    assert [dict(layer._forward_hooks) for layer in lm.layers] == before
    with pytest.raises(VectorFileError, match="layer 77"):
        Monitor(lm, vectors, layer=77)
