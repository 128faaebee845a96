"""llama.cpp control vectors: export, import, steering equal to emovec's, clear refusals.

The last test runs the exported file through real llama.cpp (llama-cpp-python) when it is
installed (`make interop`), and skips otherwise.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emovec.llama_cpp import (
    ControlVectorError,
    apply_control_vector,
    export_control_vector,
    import_control_vector,
    read_control_vector,
)
from emovec.steering import steer, steer_directions, steering_direction

STRENGTHS = {"happy": 0.5, "sad": -0.25}
PROMPT = "Tell me about your day at the market."


@pytest.fixture(scope="module")
def vectors_file(lm, request) -> Path:
    """The vectors shipped for the bundled model (loaded in a second), else the suite's."""
    from importlib import resources

    from emovec.vectors import EmotionVectors, VectorFileError

    entry = Path(str(resources.files("emovec.data") / "prebuilt" / f"{lm.name}.safetensors"))
    try:
        EmotionVectors.load(entry).check_model(lm)
        return entry
    except VectorFileError:
        return request.getfixturevalue("vectors_file")


@pytest.fixture(scope="module")
def vectors(vectors_file):
    from emovec.vectors import EmotionVectors

    return EmotionVectors.load(vectors_file)


def _logits(lm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([ids], device=lm.device)).logits[0].float()


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_export_then_import_gives_back_the_directions(vectors, lm, tmp_path):
    from gguf import GGUFReader

    layer = vectors.default_steer_layer
    path = export_control_vector(vectors, STRENGTHS, tmp_path / "cv.gguf", layers=[layer, 5])
    directions = import_control_vector(path, lm)
    assert sorted(directions) == [5, layer]
    for n, direction in directions.items():
        assert torch.equal(direction, steering_direction(vectors, STRENGTHS, n))
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 2
    assert {t.name for t in reader.tensors} == {"direction.5", f"direction.{layer}"}
    assert all(t.tensor_type.name == "F32" and len(t.shape) == 1 for t in reader.tensors)
    cv = read_control_vector(path)
    assert cv.emovec["model"] == vectors.model["name"] and cv.emovec["emotions"] == STRENGTHS
    expected = 0.5 * vectors.norm_at(5) * vectors.vector("happy", 5)
    expected -= 0.25 * vectors.norm_at(5) * vectors.vector("sad", 5)
    torch.testing.assert_close(directions[5], expected)
    # by default, the file's steering layer, as `emovec steer` uses
    default = import_control_vector(export_control_vector(vectors, STRENGTHS, path), 576)
    assert list(default) == [layer]


def test_imported_vector_steers_exactly_like_emovec_steer(vectors, lm, tmp_path):
    layer, ids = vectors.default_steer_layer, lm.encode(PROMPT)
    with steer(lm, vectors, STRENGTHS, layers=[layer], positions="all"):
        reference = _logits(lm, ids)
    plain = _logits(lm, ids)

    def through_file(strengths: dict[str, float], at: int, scale: float = 1.0) -> torch.Tensor:
        path = export_control_vector(vectors, strengths, tmp_path / f"{at}.gguf", layers=[at])
        with apply_control_vector(lm, path, scale=scale):
            return _logits(lm, ids)

    torch.testing.assert_close(through_file(STRENGTHS, layer), reference, atol=1e-5, rtol=1e-5)
    # strength 1 exported, scaled at load (llama.cpp's --control-vector-scaled F:0.5)
    torch.testing.assert_close(
        through_file({"happy": 1.0, "sad": -0.5}, layer, scale=0.5), reference, atol=1e-4, rtol=0
    )
    effect = (reference - plain).abs().max()
    assert effect > 1.0  # the steering is strong enough for the checks below to mean something
    for wrong in (
        through_file(STRENGTHS, layer + 1),
        through_file(STRENGTHS, layer - 1),
        through_file({e: -s for e, s in STRENGTHS.items()}, layer),
    ):
        assert (wrong - reference).abs().max() > 0.2 * effect
    assert _logits(lm, ids).equal(plain)  # hooks gone


def test_layer_zero_is_refused_both_ways(vectors, lm, tmp_path):
    with pytest.raises(ControlVectorError, match=r"layer 0 cannot be exported: llama\.cpp never"):
        export_control_vector(vectors, STRENGTHS, tmp_path / "zero.gguf", layers=[0, 5])
    assert not (tmp_path / "zero.gguf").exists()
    vec = np.ones(576, dtype=np.float32)
    path = _write_gguf(tmp_path / "repeng0.gguf", {"direction.0": vec, "direction.1": vec})
    with pytest.raises(ControlVectorError, match=r"holds direction\.0: llama\.cpp never applies"):
        import_control_vector(path, lm)


def test_bad_export_input_is_refused(vectors, tmp_path):
    path = tmp_path / "bad.gguf"
    with pytest.raises(ControlVectorError, match=r"'happy' is not a finite number"):
        export_control_vector(vectors, {"happy": float("nan")}, path)
    with pytest.raises(ControlVectorError, match=r"no emotions given"):
        export_control_vector(vectors, {}, path)
    with pytest.raises(ValueError, match=r"layer 99 is not in this vector file"):
        export_control_vector(vectors, STRENGTHS, path, layers=[99])
    assert not path.exists()


def test_wrong_width_and_layer_beyond_the_model_are_refused(vectors, lm, tmp_path):
    path = export_control_vector(vectors, STRENGTHS, tmp_path / "cv.gguf")
    with pytest.raises(ControlVectorError, match=r"576 wide .* has d_model 640"):
        import_control_vector(path, 640)
    narrow = _write_gguf(tmp_path / "narrow.gguf", {"direction.3": np.ones(32, np.float32)})
    with pytest.raises(ControlVectorError, match=r"32 wide but model 'smollm2.*d_model 576"):
        import_control_vector(narrow, lm)
    deep = _write_gguf(tmp_path / "deep.gguf", {"direction.40": np.ones(576, np.float32)})
    with pytest.raises(ControlVectorError, match=r"direction\.40 is beyond .* 30 layers"):
        import_control_vector(deep, lm)
    with pytest.raises(ValueError, match=r"shape \(32,\).* 576 wide"):
        steer_directions(lm, {3: torch.ones(32)}).__enter__()


def test_files_that_are_not_control_vectors_are_refused(lm, tmp_path):
    from emovec.models import builtin_gguf_path

    model_file = builtin_gguf_path(lm.name)
    with pytest.raises(ControlVectorError, match=r"GGUF file but not a control vector .*'llama'"):
        import_control_vector(model_file, lm)
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf file")
    with pytest.raises(ControlVectorError, match=r"not a readable GGUF file"):
        import_control_vector(text, lm)
    with pytest.raises(ControlVectorError, match=r"control vector not found"):
        import_control_vector(tmp_path / "missing.gguf", lm)
    other = _write_gguf(tmp_path / "other.gguf", {"blk.1.w": np.ones(576, np.float32)})
    with pytest.raises(ControlVectorError, match=r"'blk\.1\.w' is not a control-vector direction"):
        import_control_vector(other, lm)
    half = _write_gguf(tmp_path / "half.gguf", {"direction.2": np.ones(576, np.float16)})
    with pytest.raises(ControlVectorError, match=r"type F16; llama\.cpp loads only float32"):
        import_control_vector(half, lm)


def test_cli_export_and_import(vectors_file, tmp_path, run_cli):
    path = tmp_path / "happy.gguf"
    args = ("export", "llama-cpp", "-v", vectors_file, "-e", "happy", "-s", "0.4", "-o", path)
    code, out, err = run_cli(*args, "--layers", "8,12")
    assert code == 0, err
    assert "--control-vector-scaled" in out and path.is_file()
    code, out, err = run_cli(
        "import", "llama-cpp", path, "--prompt", "Hi.", "--max-new-tokens", "4"
    )
    assert code == 0, err
    assert "2 layers, d_model 576, model hint llama" in out and "happy +0.4" in out
    assert "steered (x1):" in out and "unsteered:" in out
    code, _, err = run_cli(*args, "--layers", "0")
    assert code == 2 and "layer 0 cannot be exported" in err and len(err.strip().splitlines()) == 1


# --- round trip through real llama.cpp ------------------------------------------------------

LLAMA_CPP_INSTALL = (
    "llama-cpp-python is not installed; run `make interop` (or: CMAKE_ARGS=-DGGML_NATIVE=OFF "
    "pip wheel --no-deps llama-cpp-python==0.3.36 -w WHEELS && pip install WHEELS/llama_cpp*)"
)


def _import_llama_cpp():
    """llama_cpp, or a skip naming the install command (a failure under `make interop`)."""
    if os.environ.get("EMOVEC_INTEROP") == "1":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason=LLAMA_CPP_INSTALL)


def _llama_cpp_logits(model_file: Path, ids: list[int], cvec: Path | None) -> np.ndarray:
    """Logits at every position from llama.cpp, with ``cvec`` applied as llama-cli applies it."""
    llama_cpp = _import_llama_cpp()

    llm = llama_cpp.Llama(
        str(model_file), n_ctx=256, logits_all=True, n_threads=2, seed=0, verbose=False
    )
    try:
        if cvec is not None:
            directions = read_control_vector(cvec).directions
            n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
            # data starts at layer 1 (llama.cpp keeps nothing for layer 0)
            data = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
            for layer, direction in directions.items():
                data[n_embd * (layer - 1) : n_embd * layer] += direction.numpy()
            ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer)
            assert rc == 0
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def _agreement(emovec: np.ndarray, cpp: np.ndarray) -> tuple[float, float]:
    """Two steering effects (logit shifts at every position and token) compared: Pearson
    correlation, and the size of their difference relative to emovec's effect."""
    r = float(np.corrcoef(emovec.reshape(-1), cpp.reshape(-1))[0, 1])
    return r, float(np.linalg.norm(cpp - emovec) / np.linalg.norm(emovec))


def test_round_trip_through_llama_cpp(vectors, lm, tmp_path):
    """llama.cpp (Q4_1 weights) steered by the exported file moves the logits as emovec's
    steering (the same GGUF, dequantised) does; a layer off by one or a flipped sign does not."""
    _import_llama_cpp()
    from emovec.models import builtin_gguf_path

    layer = vectors.default_steer_layer
    ids = lm.encode(lm.format_chat([{"role": "user", "content": PROMPT}]))
    cvec = export_control_vector(vectors, STRENGTHS, tmp_path / "cv.gguf", layers=[layer])
    model_file = builtin_gguf_path(lm.name)
    plain_cpp = _llama_cpp_logits(model_file, ids, None)
    effect_cpp = _llama_cpp_logits(model_file, ids, cvec) - plain_cpp
    plain = _logits(lm, ids).double().numpy()

    def effect(at: int, sign: float = 1.0) -> np.ndarray:
        strengths = {e: sign * s for e, s in STRENGTHS.items()}
        with steer(lm, vectors, strengths, layers=[at], positions="all"):
            return _logits(lm, ids).double().numpy() - plain

    right = _agreement(effect(layer), effect_cpp)
    wrong = {
        "layer -1": _agreement(effect(layer - 1), effect_cpp),
        "layer +1": _agreement(effect(layer + 1), effect_cpp),
        "sign flipped": _agreement(effect(layer, -1.0), effect_cpp),
    }
    base = float(np.corrcoef(plain.reshape(-1), plain_cpp.reshape(-1))[0, 1])
    shown = ", ".join(f"{k} r={r:.3f} err={e:.3f}" for k, (r, e) in wrong.items())
    print(
        f"\nllama.cpp vs emovec, layer {layer}: r={right[0]:.4f} err={right[1]:.3f}; {shown}; "
        f"unsteered logits r={base:.4f}"
    )
    assert base > 0.99  # the two runtimes agree on the model itself
    assert right[0] > 0.98 and right[1] < 0.2
    for r, err in wrong.values():
        assert r < right[0] - 0.03 and err > 2 * right[1]
