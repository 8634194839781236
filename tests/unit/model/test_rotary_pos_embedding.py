"""Rotary embeddings against a complex-number formulation in float64."""
import pytest
import torch

from megatron.model.rotary_pos_embedding import RotaryEmbedding, apply_rotary_pos_emb


def _complex_reference(t, rotary_dim, base):
    """Pair dim i with dim i + rotary_dim/2 as a complex number and multiply by
    exp(1j * pos * base^(-2i/rotary_dim)); pass the other dims through."""
    s = t.shape[0]
    half = rotary_dim // 2
    t64 = t.double()
    z = torch.complex(t64[..., :half], t64[..., half:rotary_dim])
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64) * 2 / rotary_dim)
    phase = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None, :]
    z = z * torch.polar(torch.ones_like(phase), phase)[:, None, None, :]
    return torch.cat((z.real, z.imag, t64[..., rotary_dim:]), dim=-1)


@pytest.mark.parametrize("head_dim,percent,base", [(16, 1.0, 10000.0), (16, 0.25, 10000.0),
                                                   (8, 0.5, 500.0)])
def test_rotary_matches_complex_reference(head_dim, percent, base):
    torch.manual_seed(0)
    s, b, heads = 11, 2, 3
    t = torch.randn(s, b, heads, head_dim)
    rotary_dim = int(head_dim * percent)
    out = apply_rotary_pos_emb(t, RotaryEmbedding(rotary_dim, base)(s))
    torch.testing.assert_close(out.double(), _complex_reference(t, rotary_dim, base),
                               rtol=1e-5, atol=1e-5)
    # dims beyond rotary_dim are untouched
    assert torch.equal(out[..., rotary_dim:], t[..., rotary_dim:])


def test_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8).double(), torch.randn(1, 1, 1, 8).double()
    angles = RotaryEmbedding(8)(20).double()

    def score(m, n):
        return (apply_rotary_pos_emb(q, angles[m:m + 1]) * apply_rotary_pos_emb(k, angles[n:n + 1])).sum()

    torch.testing.assert_close(score(3, 1), score(17, 15))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_rotary_dim_must_be_even():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)


def test_build_rotary_embedding_follows_the_config():
    from megatron.model.rotary_pos_embedding import build_rotary_embedding
    from megatron.model.transformer_config import TransformerConfig

    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, max_position_embeddings=16,
                padded_vocab_size=32)
    assert build_rotary_embedding(TransformerConfig(**base)) is None
    rope = TransformerConfig(**base, position_embedding_type="rope", rotary_percent=0.5,
                             rotary_base=500.0)
    rotary = build_rotary_embedding(rope)
    assert (rotary.rotary_dim, rotary.base) == (8, 500.0)
