"""FLOP count against Megatron's published closed form and hand counts."""
import pytest

from megatron.flops import ModelShape, training_flops_per_iteration


def _classic(layers, hidden, heads, vocab):
    return ModelShape(num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden,
                      num_attention_heads=heads, num_key_value_heads=heads,
                      kv_channels=hidden // heads, padded_vocab_size=vocab)


@pytest.mark.parametrize("layers,hidden,heads,seq,vocab,batch", [
    (12, 768, 12, 512, 50304, 2), (4, 256, 8, 256, 50304, 16), (40, 5120, 40, 2048, 50688, 1024)])
def test_matches_megatron_closed_form(layers, hidden, heads, seq, vocab, batch):
    shape = _classic(layers, hidden, heads, vocab)
    megatron = 72 * batch * seq * layers * hidden ** 2 * (
        1 + seq / (6 * hidden) + vocab / (12 * layers * hidden))
    assert training_flops_per_iteration(shape, global_batch_size=batch, seq_length=seq) == \
        pytest.approx(megatron, rel=1e-12)


def test_full_recompute_adds_one_forward_of_the_layers():
    shape = _classic(2, 64, 4, 100)
    batch, seq = 3, 16
    plain = training_flops_per_iteration(shape, global_batch_size=batch, seq_length=seq)
    full = training_flops_per_iteration(shape, global_batch_size=batch, seq_length=seq,
                                        recompute_granularity="full")
    layer_forward = 2 * batch * seq * (24 * 64 * 64 + 4 * seq * 64)  # two layers, hand count
    assert full - plain == pytest.approx(layer_forward)


def test_gqa_and_swiglu_hand_count():
    # h=8, 2 query heads of 4, 1 kv head, ffn 12, swiglu; one layer, vocab 10, s=2, B=1.
    shape = ModelShape(num_layers=1, hidden_size=8, ffn_hidden_size=12, num_attention_heads=2,
                       num_key_value_heads=1, kv_channels=4, padded_vocab_size=10, swiglu=True)
    forward_per_token = (2 * 8 * (8 + 4 + 4)   # q, k, v projections
                         + 2 * 8 * 8           # output projection
                         + 3 * 2 * 8 * 12      # three SwiGLU matrices
                         + 4 * 2 * 8           # scores and weighted sum over s=2
                         + 2 * 8 * 10)         # LM head
    assert training_flops_per_iteration(shape, global_batch_size=1, seq_length=2) == \
        3 * forward_per_token * 2


def test_bad_granularity_is_named():
    with pytest.raises(ValueError, match="recompute_granularity"):
        training_flops_per_iteration(_classic(1, 8, 2, 8), global_batch_size=1, seq_length=2,
                                     recompute_granularity="partial")


def test_shape_of_transformer_config_with_gqa_and_swiglu():
    from megatron.model.transformer_config import TransformerConfig

    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=8,
                               num_key_value_heads=2, activation="swiglu", seq_length=16,
                               max_position_embeddings=16, padded_vocab_size=128)
    shape = ModelShape.of(config)
    assert (shape.num_key_value_heads, shape.kv_channels, shape.swiglu) == (2, 8, True)
    assert shape.ffn_hidden_size == config.ffn_hidden_size
