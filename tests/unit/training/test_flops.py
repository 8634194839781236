"""FLOP count against Megatron's published closed form and hand counts."""
import pytest

from megatron.model.transformer_config import TransformerConfig
from megatron.training.flops import training_flops_per_iteration


def _classic(layers, hidden, heads, vocab, **options):
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                             max_position_embeddings=4096, padded_vocab_size=vocab, **options)


@pytest.mark.parametrize("layers,hidden,heads,seq,vocab,batch", [
    (12, 768, 12, 512, 50304, 2), (4, 256, 8, 256, 50304, 16), (40, 5120, 40, 2048, 50688, 1024)])
def test_matches_megatron_closed_form(layers, hidden, heads, seq, vocab, batch):
    config = _classic(layers, hidden, heads, vocab)
    assert config.ffn_hidden_size == 4 * hidden
    megatron = 72 * batch * seq * layers * hidden ** 2 * (
        1 + seq / (6 * hidden) + vocab / (12 * layers * hidden))
    assert training_flops_per_iteration(config, global_batch_size=batch, seq_length=seq) == \
        pytest.approx(megatron, rel=1e-12)


@pytest.mark.parametrize("options", [
    dict(recompute_granularity="full", recompute_method="uniform"),
    dict(checkpoint_activations=True)])
def test_full_recompute_adds_one_forward_of_the_layers(options):
    batch, seq = 3, 16
    plain = training_flops_per_iteration(_classic(2, 64, 4, 100), global_batch_size=batch,
                                         seq_length=seq)
    full = training_flops_per_iteration(_classic(2, 64, 4, 100, **options),
                                        global_batch_size=batch, seq_length=seq)
    layer_forward = 2 * batch * seq * (24 * 64 * 64 + 4 * seq * 64)  # two layers, hand count
    assert full - plain == pytest.approx(layer_forward)


def test_selective_recompute_adds_one_core_attention():
    batch, seq = 3, 16
    plain = training_flops_per_iteration(_classic(2, 64, 4, 100), global_batch_size=batch,
                                         seq_length=seq)
    selective = training_flops_per_iteration(
        _classic(2, 64, 4, 100, recompute_granularity="selective"), global_batch_size=batch,
        seq_length=seq)
    assert selective - plain == pytest.approx(2 * batch * seq * 4 * seq * 64)


def test_gqa_and_swiglu_hand_count():
    # h=8, 2 query heads of 4, 1 kv head, ffn 12, swiglu; one layer, vocab 10, s=2, B=1.
    config = TransformerConfig(num_layers=1, hidden_size=8, ffn_hidden_size=12,
                               num_attention_heads=2, num_key_value_heads=1, activation="swiglu",
                               max_position_embeddings=2, padded_vocab_size=10)
    forward_per_token = (2 * 8 * (8 + 4 + 4)   # q, k, v projections
                         + 2 * 8 * 8           # output projection
                         + 3 * 2 * 8 * 12      # three SwiGLU matrices
                         + 4 * 2 * 8           # scores and weighted sum over s=2
                         + 2 * 8 * 10)         # LM head
    assert training_flops_per_iteration(config, global_batch_size=1, seq_length=2) == \
        3 * forward_per_token * 2


def test_config_without_vocabulary_is_refused():
    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2,
                               max_position_embeddings=2)
    with pytest.raises(ValueError, match="padded_vocab_size is not set"):
        training_flops_per_iteration(config, global_batch_size=1, seq_length=2)
