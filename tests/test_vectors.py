"""The vector file: round trip, self-description, and refusal of damaged or foreign files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emovec.models import LanguageModel
from emovec.vectors import EmotionVectors, VectorFileError


def test_round_trip_keeps_tensors_and_metadata(vectors, vectors_file):
    loaded = EmotionVectors.load(vectors_file)
    torch.testing.assert_close(loaded.vectors, vectors.vectors)
    torch.testing.assert_close(loaded.residual_norm, vectors.residual_norm)
    assert loaded.info() == json.loads(json.dumps(vectors.info()))
    for key in ("emotions", "layers", "default_layer", "d_model", "model"):
        assert key in loaded.info()


def test_truncated_file_is_refused(vectors_file, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(vectors_file.read_bytes()[:1000])
    with pytest.raises(VectorFileError, match="corrupted"):
        EmotionVectors.load(broken)


def test_missing_and_foreign_safetensors_files_are_refused(tmp_path):
    with pytest.raises(VectorFileError, match="not found"):
        EmotionVectors.load(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, other)
    with pytest.raises(VectorFileError, match="not an emovec vector file"):
        EmotionVectors.load(other)


def test_inconsistent_metadata_is_refused(vectors, tmp_path):
    meta = vectors.info()
    meta.pop("residual_norm")
    meta["d_model"] = 7
    path = tmp_path / "bad.safetensors"
    save_file(
        {
            "vectors": vectors.vectors,
            "residual_norm": vectors.residual_norm,
            "mean_activation": vectors.mean_activation,
        },
        path,
        metadata={"emovec": json.dumps(meta)},
    )
    with pytest.raises(VectorFileError, match="shape"):
        EmotionVectors.load(path)


def test_vectors_refuse_another_model(vectors, lm, tiny_llama):
    other = LanguageModel(tiny_llama, lm.tokenizer, "tiny-llama")
    with pytest.raises(VectorFileError, match="belong to model 'smollm2-135m-instruct'"):
        vectors.check_model(other)


def test_same_architecture_other_weights_is_refused(vectors, lm):
    import copy

    twin = copy.deepcopy(lm.model)
    with torch.no_grad():
        twin.model.layers[3].mlp.down_proj.weight.mul_(1.01)
    other = LanguageModel(twin, lm.tokenizer, "finetune")
    assert other.fingerprint != lm.fingerprint
    with pytest.raises(VectorFileError, match="fingerprint"):
        vectors.check_model(other)


def test_layer_not_in_file_is_a_clear_error(vectors):
    with pytest.raises(VectorFileError, match="layer 99 is not in this vector file"):
        vectors.at(99)


def test_save_is_atomic_and_leaves_no_temp_files(vectors, tmp_path, monkeypatch):
    path = vectors.save(tmp_path / "v.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]
    assert EmotionVectors.load(path).emotions == vectors.emotions
    before = path.read_bytes()

    # A save that dies halfway (here: after writing part of the file) keeps the old file.
    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", dies_halfway)
    with pytest.raises(OSError, match="No space"):
        vectors.subset(vectors.emotions[:2]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_repr_is_one_short_line_without_tensors(vectors):
    text = repr(vectors)
    assert "\n" not in text and len(text) < 300 and "tensor" not in text
    assert text.startswith("EmotionVectors(model='smollm2-135m-instruct', 16 emotions (")
    assert f"layers 0..29, default layer {vectors.default_layer}" in text
    assert "corpus='curated-test-subset'" in text
    assert str(vectors) == text


def test_subset_keeps_each_emotions_rows_and_drops_whole_set_geometry(vectors):
    import dataclasses

    with_axes = dataclasses.replace(
        vectors, geometry_scores=torch.zeros(len(vectors.layers), len(vectors.emotions), 3)
    )
    few = with_axes.subset(["sad", "happy"])
    assert few.emotions == ["sad", "happy"]
    assert torch.equal(few.vectors[:, 1], vectors.vectors[:, vectors.emotions.index("happy")])
    if vectors.readers is not None:
        assert torch.equal(few.readers[:, 0], vectors.readers[:, vectors.emotions.index("sad")])
    assert few.geometry_scores is None
    with pytest.raises(VectorFileError, match="use subset"):
        dataclasses.replace(with_axes, emotions=["happy"], vectors=vectors.vectors[:, :1])
