"""Attention pieces on one rank: the QKV layout, both core-attention paths against a
float64 reference (with GQA and masks)."""
import math

import pytest
import torch

from megatron.model.attention import CoreAttention, ParallelAttention
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.harness import run_on_ranks


def split_layout(num_heads, num_kv_heads):
    setup_parallel(1)
    config = make_config(num_attention_heads=num_heads, num_key_value_heads=num_kv_heads)
    attention = ParallelAttention(config, 1)
    width = (num_heads + 2 * num_kv_heads) * config.kv_channels
    mixed = torch.arange(width, dtype=torch.float32).expand(1, 1, width)
    return [t[0, 0, :, 0].tolist() for t in attention.split_qkv(mixed)], config.kv_channels


def test_qkv_layout_is_per_head_interleaved():
    (q, k, v), hd = run_on_ranks(split_layout, 8, 8, world_size=1)[0]
    # [heads, 3, head_dim]: head h's q, k, v rows start at (3h, 3h+1, 3h+2) * head_dim
    assert q == [3 * h * hd for h in range(8)]
    assert k == [(3 * h + 1) * hd for h in range(8)]
    assert v == [(3 * h + 2) * hd for h in range(8)]


def test_qkv_layout_with_gqa_is_per_group():
    (q, k, v), hd = run_on_ranks(split_layout, 8, 2, world_size=1)[0]
    # [groups, (4 queries, k, v), head_dim]: group g starts at 6g * head_dim
    assert q == [(6 * (h // 4) + h % 4) * hd for h in range(8)]
    assert k == [(6 * g + 4) * hd for g in range(2)]
    assert v == [(6 * g + 5) * hd for g in range(2)]


def _reference(q, k, v, mask):
    """float64 attention; query head h reads key/value head h // (heads / kv_heads)."""
    sq, b, heads, hd = q.shape
    group = heads // k.shape[2]
    k = k.double().repeat_interleave(group, dim=2)
    v = v.double().repeat_interleave(group, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q.double(), k) / math.sqrt(hd)
    blocked = torch.ones(sq, sq, dtype=torch.bool).triu(1)
    if mask is not None:
        blocked = blocked | mask
    probs = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
    return torch.einsum("bhst,tbhd->sbhd", probs, v).reshape(sq, b, -1)


def core_attention_outputs(use_flash_attn, with_mask):
    setup_parallel(1)
    config = make_config(use_flash_attn=use_flash_attn)
    g = torch.Generator().manual_seed(0)
    s, b, heads, kv_heads, hd = 12, 2, 8, 2, 8
    q = torch.randn(s, b, heads, hd, generator=g)
    k = torch.randn(s, b, kv_heads, hd, generator=g)
    v = torch.randn(s, b, kv_heads, hd, generator=g)
    mask = None
    if with_mask:
        mask = torch.zeros(b, 1, s, s, dtype=torch.bool)
        mask[1, 0, 6:, :6] = True  # second sample: a new document starts at 6
    core = CoreAttention(config, layer_number=3).eval()  # layer 3: query-key layer scaling
    group = heads // kv_heads
    out = core(q, k.repeat_interleave(group, 2), v.repeat_interleave(group, 2), mask)
    return out, _reference(q, k, v, mask)


@pytest.mark.parametrize("use_flash_attn", [False, True], ids=["classic", "sdpa"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal+document"])
def test_core_attention_matches_float64_reference(use_flash_attn, with_mask):
    out, ref = run_on_ranks(core_attention_outputs, use_flash_attn, with_mask, world_size=1)[0]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
