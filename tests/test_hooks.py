"""Residual-stream hooks: the right modules for every supported family, always removed."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from emovec.hooks import (
    UnsupportedModelError,
    backbone,
    decoder_layers,
    residual_hooks,
    run_to_layer,
)

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
    head_dim=8,
)
FAMILIES = {
    "llama": TINY,
    "mistral": TINY,
    "qwen2": TINY,
    "qwen3": TINY,
    "gemma2": TINY,
    "gemma3_text": TINY,
    "gpt2": dict(n_embd=32, n_layer=3, n_head=4, vocab_size=128, n_positions=64),
    "gpt_neox": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=128,
        max_position_embeddings=64,
    ),
}


def tiny_model(model_type: str):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **FAMILIES[model_type])
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_hooks_see_the_residual_stream_of_every_family(model_type):
    model = tiny_model(model_type)
    layers = decoder_layers(model)
    assert len(layers) == 3
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
    seen = {}

    def grab(layer, hidden, offset):
        seen[layer] = hidden.clone()

    with torch.no_grad(), residual_hooks(layers, {0: grab, 1: grab}):
        run_to_layer(model, 1, input_ids=ids)
    # hidden_states[L + 1] is the output of block L (the last entry is after the final norm)
    for layer in (0, 1):
        torch.testing.assert_close(seen[layer], reference[layer + 1])


def test_run_to_layer_stops_early():
    model = tiny_model("llama")
    calls = []
    with residual_hooks(decoder_layers(model), {2: lambda *a: calls.append(1)}):
        run_to_layer(model, 1, input_ids=torch.randint(0, 128, (1, 5)))
    assert calls == []  # block 2 never ran


def test_unknown_architecture_names_the_class():
    model = torch.nn.Linear(2, 2)
    model.config = type("Cfg", (), {"model_type": "mystery"})()
    with pytest.raises(UnsupportedModelError, match="Linear.*mystery"):
        backbone(model)


def test_hooks_removed_after_an_error_in_the_forward_pass():
    model = tiny_model("llama")
    layers = decoder_layers(model)

    def boom(layer, hidden, offset):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), residual_hooks(layers, {1: boom}):
        model(torch.randint(0, 128, (1, 4)))
    assert all(not layer._forward_hooks for layer in layers)


def test_layer_out_of_range_is_refused_before_any_hook_is_left():
    model = tiny_model("llama")
    layers = decoder_layers(model)
    with (
        pytest.raises(IndexError, match="out of range"),
        residual_hooks(layers, {0: lambda *a: None, 7: lambda *a: None}),
    ):
        pass
    assert all(not layer._forward_hooks for layer in layers)
