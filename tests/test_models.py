"""Model loading and the adapter's view of a model."""

import copy

import pytest

from emovec.models import BUILTIN, LanguageModel, ModelError, load_model, resolve_source


def test_default_model_is_the_bundled_smollm2(lm):
    assert lm.n_layers == 30 and lm.d_model == 576
    assert lm.has_chat_template
    assert lm.identity()["model_type"] == "llama"


def test_fingerprint_is_stable_across_loads(lm):
    assert load_model().fingerprint == lm.fingerprint


def test_builtin_models_are_listed_with_their_packages():
    assert set(BUILTIN) == {
        "smollm2-135m-instruct",
        "gemma3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    big = BUILTIN["qwen2.5-coder-1.5b-instruct"]
    assert len(big.packages) == 22 and big.sha256_prefix == "cc324af0"
    assert BUILTIN["smollm2-135m-instruct"].installed()
    assert not BUILTIN["gemma3-270m"].chat


def test_model_specs_are_classified(tmp_path):
    assert resolve_source("smollm2-135m-instruct") == ("builtin", "smollm2-135m-instruct")
    assert resolve_source(str(tmp_path)) == ("folder", str(tmp_path))
    assert resolve_source("Qwen/Qwen2.5-0.5B") == ("hub", "Qwen/Qwen2.5-0.5B")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert resolve_source(str(gguf)) == ("gguf", str(gguf))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a built-in name"):
        resolve_source("smollm3")


def test_unreachable_hub_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not load model 'nobody/nothing'"):
        load_model("nobody/nothing")


def test_chat_template_and_plain_fallback(lm):
    turns = [{"role": "user", "content": "Hi"}]
    assert lm.format_chat(turns).endswith("<|im_start|>assistant\n")
    tokenizer = copy.copy(lm.tokenizer)
    tokenizer.chat_template = None
    base = LanguageModel(lm.model, tokenizer, "as-base")
    assert base.format_chat(turns) == "Human: Hi\n\nAssistant:"
    both = turns + [{"role": "assistant", "content": "Hello."}]
    assert base.format_chat(both, add_generation_prompt=False) == "Human: Hi\n\nAssistant: Hello."


def test_local_folder_and_gguf_file_load(lm, tiny_llama, tmp_path):
    from emovec.models import builtin_gguf_path

    tiny_llama.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    folder = load_model(str(tmp_path))
    assert folder.source == "folder" and folder.n_layers == 2 and folder.d_model == 32

    gguf = load_model(str(builtin_gguf_path("smollm2-135m-instruct")))
    assert gguf.source == "gguf" and gguf.fingerprint == lm.fingerprint


def test_split_gguf_parts_join_in_part_number_order(tmp_path, monkeypatch):
    from emovec import models

    modules = tuple(f"pkg_part{i}" for i in range(1, 13))
    for i, m in enumerate(modules, 1):
        (tmp_path / m / "data").mkdir(parents=True)
        (tmp_path / m / "data" / f"part{i:02d}.bin").write_bytes(bytes([i]))
    monkeypatch.setattr(models, "_module_dir", lambda m: tmp_path / m)
    order = [p.name for p in models.ordered_parts(modules)]
    assert order == [f"part{i:02d}.bin" for i in range(1, 13)]
