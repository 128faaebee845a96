"""Models in bfloat16: the same vectors read and steer as in float32, within a stated tolerance.

Tolerance: bfloat16 keeps 8 bits of mantissa, so residuals differ from float32 by about 1%
after 30 layers. Reading scores (cosines) must stay within 0.05 of float32's and correlate
above 0.98 over tokens x emotions; the steering effect on the next-token logits must point
the same way (cosine above 0.9 between the two runs' logit shifts).
"""

import numpy as np
import pytest
import torch

from emovec.models import ModelError, load_model
from emovec.reading import read
from emovec.steering import steer

TEXT = "The letter said I got the job, and I ran down the street laughing."


@pytest.fixture(scope="module")
def lm_bf16():
    return load_model(dtype="bfloat16")


def test_bfloat16_reading_matches_float32(lm, lm_bf16, vectors):
    assert lm_bf16.model.dtype == torch.bfloat16
    assert lm_bf16.identity()["dtype"] == "bfloat16"
    vectors.check_model(lm_bf16)  # built in float32: accepted on name, architecture, shape
    full, half = read(lm, vectors, TEXT), read(lm_bf16, vectors, TEXT)
    a, b = np.asarray(full.scores), np.asarray(half.scores)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 0.05
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_bfloat16_steering_moves_logits_like_float32(lm, lm_bf16, vectors):
    def shift(model):
        ids = torch.tensor([model.encode("Tell me about your day.")])
        with torch.no_grad():
            plain = model.model(input_ids=ids).logits[0, -1].float()
            with steer(model, vectors, {"happy": 0.5}):
                steered = model.model(input_ids=ids).logits[0, -1].float()
        return steered - plain

    a, b = shift(lm), shift(lm_bf16)
    assert float(a.norm()) > 1.0  # the steering does something
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9


def test_bad_dtype_and_device_map_on_a_gguf_model_are_refused():
    with pytest.raises(ModelError, match="unknown dtype 'float8'.*bfloat16"):
        load_model(dtype="float8")
    with pytest.raises(ModelError, match="--device-map needs a Hugging Face id"):
        load_model(device_map="auto")


def test_cli_reads_in_bfloat16_and_refuses_an_unknown_dtype(vectors_file):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["read", "-v", str(vectors_file), "--dtype", "bfloat16", TEXT])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["read", "-v", str(vectors_file), "--dtype", "float8", TEXT])
    assert bad.exit_code != 0 and "unknown dtype 'float8'" in bad.output
