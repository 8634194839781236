"""megatron.conversion.hf_mapping: layouts checked against hand-indexed tensors, the round
trip transformers -> GPTModel -> transformers, configs both ways, and every refusal.

Exact equality throughout (the mapping only moves values)."""
import argparse

import pytest
import torch
import transformers

from megatron.arguments import parse_args
from megatron.conversion import hf_mapping
from tests.dist.conversion.hf_models import gpt2_model, llama_model

MODELS = {
    "gpt2-tied": lambda: gpt2_model(vocab_size=100),
    "gpt2-untied": lambda: gpt2_model(vocab_size=100, activation="gelu", tied=False),
    "llama-gqa": lambda: llama_model(vocab_size=100, kv_heads=2),
    "llama-tied-bias": lambda: llama_model(vocab_size=100, kv_heads=4, tied=True, bias=True),
}
BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--max-position-embeddings", "32"]
LLAMA = BASE + ["--use-rotary-position-embeddings", "--normalization", "rmsnorm", "--swiglu"]


def _import(hf, padded=128):
    state = hf.state_dict()
    shape = hf_mapping.shape_from_hf_config(hf.config.to_dict())
    return shape, dict(hf_mapping.import_tensors(shape, state.__getitem__, padded_vocab_size=padded))


@pytest.mark.parametrize("variant", list(MODELS))
def test_round_trip_is_tensor_for_tensor_equal(variant):
    hf = MODELS[variant]()
    shape, ours = _import(hf)
    assert list(ours) == hf_mapping.megatron_names(shape)
    exported = {}
    for name, tensor in ours.items():
        for hf_name, hf_tensor in hf_mapping.export_tensor(shape, name, tensor):
            assert hf_name not in exported
            exported[hf_name] = hf_tensor
    original = {k: v for k, v in hf.state_dict().items()
                if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}
    assert sorted(exported) == sorted(original)
    assert (sorted((n, tuple(t.shape)) for n, t in exported.items())
            == sorted(hf_mapping.hf_tensor_shapes(shape)))
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_gpt2_layout_by_hand():
    hf = gpt2_model(vocab_size=100)
    _, ours = _import(hf)
    words = ours["language_model.embedding.word_embeddings.weight"]
    assert words.shape == (128, 64) and not words[100:].any()
    # Conv1D [in, out] -> Linear [out, in]
    assert torch.equal(ours["language_model.encoder.layers.1.mlp.dense_4h_to_h.weight"],
                       hf.transformer.h[1].mlp.c_proj.weight.detach().t())
    # head 2's key rows come from c_attn's k block: columns h + 2*16 ... h + 3*16
    qkv = ours["language_model.encoder.layers.0.self_attention.query_key_value.weight"]
    c_attn = hf.transformer.h[0].attn.c_attn.weight.detach()
    assert torch.equal(qkv.view(4, 3, 16, 64)[2, 1], c_attn[:, 64 + 32:64 + 48].t())
    assert torch.equal(qkv.view(4, 3, 16, 64)[3, 2], c_attn[:, 128 + 48:128 + 64].t())


def test_llama_layout_by_hand():
    hf = llama_model(vocab_size=100, kv_heads=2)  # 4 query heads, 2 per key/value group
    _, ours = _import(hf)
    attention = hf.model.layers[1].self_attn
    qkv = ours["language_model.encoder.layers.1.self_attention.query_key_value.weight"]
    grouped = qkv.view(2, 4, 16, 64)  # [group, (q0, q1, k, v), head_dim, in]
    q, k, v = (p.weight.detach() for p in (attention.q_proj, attention.k_proj, attention.v_proj))
    assert torch.equal(grouped[1, 0], q[32:48])  # query head 2 is group 1's first
    assert torch.equal(grouped[1, 1], q[48:64])
    assert torch.equal(grouped[1, 2], k[16:32])
    assert torch.equal(grouped[0, 3], v[0:16])
    mlp = hf.model.layers[1].mlp
    h_to_4h = ours["language_model.encoder.layers.1.mlp.dense_h_to_4h.weight"]
    assert torch.equal(h_to_4h[:96], mlp.gate_proj.weight.detach())
    assert torch.equal(h_to_4h[96:], mlp.up_proj.weight.detach())
    assert torch.equal(ours["language_model.output_layer.weight"][:100], hf.lm_head.weight.detach())


@pytest.mark.parametrize("variant", list(MODELS))
def test_configs_round_trip(variant):
    """config.json -> shape -> flags -> pretrain_gpt's args -> shape -> config.json."""
    hf = MODELS[variant]()
    shape = hf_mapping.shape_from_hf_config(hf.config.to_dict())
    args = parse_args(hf_mapping.megatron_flags(shape) + ["--seq-length", "32"])
    assert hf_mapping.shape_from_args(args, vocab_size=100) == shape
    config = hf_mapping.hf_config(shape, dtype=torch.float32, eos_token_id=50256)
    assert hf_mapping.shape_from_hf_config(config) == shape
    loaded = transformers.AutoConfig.for_model(**config)
    assert type(hf.config) is type(loaded)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(loaded, key) == getattr(hf.config, key), key
    if shape.architecture == hf_mapping.LLAMA:
        for key in ("num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
                    "attention_bias", "mlp_bias"):
            assert getattr(loaded, key) == getattr(hf.config, key), key
        assert loaded.rope_parameters["rope_theta"] == hf.config.rope_parameters["rope_theta"]
    else:
        assert loaded.n_inner == shape.ffn_hidden_size
        assert loaded.layer_norm_epsilon == hf.config.layer_norm_epsilon


@pytest.mark.parametrize("flags,named", [
    (BASE + ["--normalization", "rmsnorm"], "--normalization rmsnorm"),
    (BASE + ["--swiglu"], "--swiglu"),
    (BASE + ["--num-key-value-heads", "2"], "--num-key-value-heads 2"),
    (BASE + ["--kv-channels", "8"], "--kv-channels 8"),
    (BASE + ["--no-position-embedding"], "--no-position-embedding"),
    (BASE + ["--use-rotary-position-embeddings", "--swiglu"], "--normalization layernorm"),
    (BASE + ["--use-rotary-position-embeddings", "--normalization", "rmsnorm"], "--swiglu"),
    (LLAMA + ["--rotary-percent", "0.5"], "--rotary-percent 0.5"),
    (LLAMA + ["--apply-layernorm-1p"], "--apply-layernorm-1p"),
    (LLAMA + ["--num-experts", "4"], "--num-experts 4"),
])
def test_shapes_without_an_equivalent_are_refused_naming_the_flag(flags, named):
    args = parse_args(flags)
    with pytest.raises(ValueError, match=named.replace("-", r"\-")) as error:
        hf_mapping.architecture_of_args(args)
    assert "\n" not in str(error.value)


def test_supported_flags_pick_the_architecture():
    assert hf_mapping.architecture_of_args(parse_args(BASE)) == hf_mapping.GPT2
    assert hf_mapping.architecture_of_args(parse_args(LLAMA)) == hf_mapping.LLAMA


@pytest.mark.parametrize("change,named", [
    ({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}, "GPTNeoXForCausalLM"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "llama3"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"attention_bias": True, "mlp_bias": False}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_llama_configs_without_an_equivalent_are_refused(change, named):
    config = llama_model(vocab_size=100).config.to_dict()
    config.update(change)
    with pytest.raises(ValueError, match=named):
        hf_mapping.shape_from_hf_config(config)


@pytest.mark.parametrize("change,named", [
    ({"activation_function": "relu"}, "activation_function"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_gpt2_configs_without_an_equivalent_are_refused(change, named):
    config = gpt2_model(vocab_size=100).config.to_dict()
    config.update(change)
    with pytest.raises(ValueError, match=named):
        hf_mapping.shape_from_hf_config(config)


def test_unknown_tensor_and_small_padding_are_refused():
    hf = gpt2_model(vocab_size=100)
    shape, ours = _import(hf)
    with pytest.raises(ValueError, match="no place"):
        hf_mapping.export_tensor(shape, "language_model.encoder.layers.0.extra.weight",
                                 torch.zeros(1))
    state = hf.state_dict()
    with pytest.raises(ValueError, match="larger than the padded vocabulary"):
        list(hf_mapping.import_tensors(shape, state.__getitem__, padded_vocab_size=64))
    with pytest.raises(ValueError, match="larger than the checkpoint's padded vocabulary"):
        hf_mapping.shape_from_args(argparse.Namespace(**vars(parse_args(BASE)),
                                                      padded_vocab_size=64), vocab_size=100)
