"""TransformerConfig: derived defaults and ValueErrors naming the fields."""
import math

import pytest
import torch

from megatron.model.transformer_config import TransformerConfig

BASE = dict(num_layers=4, hidden_size=64, num_attention_heads=8, max_position_embeddings=32,
            padded_vocab_size=256)


def make(**overrides):
    return TransformerConfig(**{**BASE, **overrides})


def test_derived_defaults():
    cfg = make()
    assert cfg.num_key_value_heads == 8
    assert cfg.kv_channels == 8
    assert cfg.ffn_hidden_size == 256
    assert cfg.seq_length == 32
    assert cfg.attention_softmax_in_fp32  # forced by apply_query_key_layer_scaling
    assert cfg.rotary_dim == 0
    # SwiGLU width as upstream: int(8h/3 / 64) * 64
    assert make(hidden_size=768, num_attention_heads=12, activation="swiglu").ffn_hidden_size == 2048
    assert make(position_embedding_type="rope", rotary_percent=0.25).rotary_dim == 2


def test_init_methods_use_std_and_scaled_std():
    cfg = make(init_method_std=0.5, num_layers=8)
    torch.manual_seed(0)
    w = cfg.init_method(torch.empty(400, 400))
    o = cfg.output_layer_init_method(torch.empty(400, 400))
    assert abs(w.std().item() - 0.5) < 0.01
    assert abs(o.std().item() - 0.5 / math.sqrt(16)) < 0.003


@pytest.mark.parametrize("overrides,fields", [
    (dict(num_attention_heads=6, tensor_model_parallel_size=4),
     ["num_attention_heads", "tensor_model_parallel_size"]),
    (dict(num_key_value_heads=3), ["num_key_value_heads", "num_attention_heads"]),
    (dict(num_key_value_heads=2, tensor_model_parallel_size=4),
     ["num_key_value_heads", "tensor_model_parallel_size"]),
    (dict(hidden_size=60), ["hidden_size", "num_attention_heads"]),
    (dict(sequence_parallel=True), ["sequence_parallel", "tensor_model_parallel_size"]),
    (dict(padded_vocab_size=250, tensor_model_parallel_size=4), ["padded_vocab_size"]),
    (dict(num_layers=3, pipeline_model_parallel_size=2), ["num_layers", "pipeline_model_parallel_size"]),
    (dict(seq_length=64), ["seq_length", "max_position_embeddings"]),
    (dict(max_position_embeddings=0), ["max_position_embeddings"]),
    (dict(normalization="batchnorm"), ["normalization"]),
    (dict(activation="relu"), ["activation"]),
    (dict(position_embedding_type="alibi"), ["position_embedding_type"]),
    (dict(openai_gelu=True, activation="swiglu"), ["openai_gelu", "activation"]),
    (dict(position_embedding_type="rope", rotary_percent=1.5), ["rotary_percent"]),
    (dict(position_embedding_type="rope", kv_channels=6, rotary_percent=0.5), ["rotary_percent"]),
    (dict(hidden_dropout=1.0), ["hidden_dropout"]),
    (dict(recompute_granularity="full"), ["recompute_granularity", "recompute_method"]),
    (dict(recompute_method="block"), ["recompute_method", "recompute_granularity"]),
    (dict(recompute_granularity="everything"), ["recompute_granularity"]),
    (dict(checkpoint_num_layers=0), ["checkpoint_num_layers"]),
    (dict(num_layers=0), ["num_layers"]),
    (dict(padded_vocab_size=0), ["padded_vocab_size"]),
])
def test_invalid_combinations_name_the_fields(overrides, fields):
    with pytest.raises(ValueError) as err:
        make(**overrides)
    for field in fields:
        assert field in str(err.value)


def test_valid_parallel_and_rope_settings():
    cfg = make(tensor_model_parallel_size=4, num_key_value_heads=4, sequence_parallel=True,
               position_embedding_type="rope", max_position_embeddings=0, seq_length=128)
    assert cfg.num_query_groups == 4 and cfg.seq_length == 128
    # no learned positions: seq_length may exceed max_position_embeddings
    assert make(position_embedding_type="none", seq_length=64).seq_length == 64
