"""The torch scale-mask-softmax path against a float64 reference, for every mask type."""
import pytest
import torch

from megatron.model.fused_softmax import AttnMaskType, FusedScaleMaskSoftmax, causal_mask


def _reference(scores, mask, scale, causal):
    """softmax over keys in float64 with masked positions removed (exp -> 0)."""
    x = scores.double() * (1.0 if scale is None else scale)
    sq, sk = x.shape[-2:]
    blocked = torch.zeros(sq, sk, dtype=torch.bool)
    if causal:
        # query i (aligned to the last key) may see keys j <= i + sk - sq
        rows = torch.arange(sq)[:, None] + (sk - sq)
        blocked = torch.arange(sk)[None, :] > rows
    blocked = blocked.expand_as(x)
    if mask is not None:
        blocked = blocked | mask.expand_as(x)
    x = x.masked_fill(blocked, float("-inf"))
    return torch.softmax(x, dim=-1)


def _padding_mask(b, sq, sk, seed=0):
    """Random [b, 1, sq, sk] mask that leaves key 0 visible (no fully masked row)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 1, sq, sk, generator=g) < 0.4
    mask[..., 0] = False
    return mask


CASES = [
    # (name, mask type, mask builder, sq, sk)
    ("causal, no mask", AttnMaskType.causal, None, 8, 8),
    ("causal + padding mask", AttnMaskType.causal, _padding_mask, 8, 8),
    ("causal, sq < sk", AttnMaskType.causal, None, 4, 8),
    ("padding mask", AttnMaskType.padding, _padding_mask, 8, 12),
    ("padding, no mask", AttnMaskType.padding, None, 8, 8),
    ("padding with explicit causal tensor", AttnMaskType.padding,
     lambda b, sq, sk: causal_mask(sq, sk), 8, 8),
]

# (dtype, softmax_in_fp32, scale, relative tolerance vs the float64 reference)
NUMERICS = [
    # fp32: rounding of scores of magnitude ~30 moves exp() by ~|x| * 2^-24 relative
    (torch.float32, False, None, 5e-6),
    (torch.float32, True, 3.0, 5e-6),
    (torch.bfloat16, True, 2.0, 8e-3),   # one bf16 rounding of the output (2^-8)
    (torch.float16, True, 4.0, 1e-3),    # one fp16 rounding of the output (2^-11)
    (torch.float16, False, None, 4e-3),  # softmax computed in fp16
]


@pytest.mark.parametrize("name,mask_type,make_mask,sq,sk", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype,in_fp32,scale,rtol", NUMERICS,
                         ids=[f"{n[0]}-fp32softmax{n[1]}-scale{n[2]}" for n in NUMERICS])
def test_torch_softmax_matches_float64_reference(name, mask_type, make_mask, sq, sk, dtype,
                                                 in_fp32, scale, rtol):
    b, heads = 2, 3
    torch.manual_seed(1)
    scores = (torch.randn(b, heads, sq, sk) * 3).to(dtype)
    mask = make_mask(b, sq, sk) if make_mask is not None else None
    softmax = FusedScaleMaskSoftmax(
        input_in_fp16=dtype == torch.float16, input_in_bf16=dtype == torch.bfloat16,
        attn_mask_type=mask_type, scaled_masked_softmax_fusion=True,
        softmax_in_fp32=in_fp32, scale=scale)
    probs = softmax(scores, mask)
    assert probs.dtype == dtype
    expected = _reference(scores, mask, scale, mask_type == AttnMaskType.causal)
    torch.testing.assert_close(probs.double(), expected, rtol=rtol, atol=rtol * 1e-2)
    # masked entries are exactly zero
    assert torch.all(probs[expected == 0] == 0)


def test_fully_masked_row_is_uniform_like_upstream():
    """A row with every key masked gets equal weights (upstream fills -10000, not -inf)."""
    scores = torch.randn(1, 1, 2, 4)
    mask = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    mask[..., 1, :] = True
    softmax = FusedScaleMaskSoftmax(False, False, AttnMaskType.padding, True)
    probs = softmax(scores, mask)
    torch.testing.assert_close(probs[0, 0, 1], torch.full((4,), 0.25))


def test_no_kernel_on_cpu_and_kernel_predicate_rejects_fp32():
    scores = torch.randn(2, 2, 32, 32, dtype=torch.float16)
    half = FusedScaleMaskSoftmax(True, False, AttnMaskType.causal, True)
    assert not half.is_kernel_available(None, 2, 2, 32, 32, dtype=torch.float16,
                                        device_type="cpu")
    fp32 = FusedScaleMaskSoftmax(False, False, AttnMaskType.causal, True)
    assert not fp32.is_kernel_available(None, 2, 2, 32, 32, dtype=torch.float32)
    off = FusedScaleMaskSoftmax(True, False, AttnMaskType.causal, False)
    assert not off.is_kernel_available(None, 2, 2, 32, 32, dtype=torch.float16)
    assert half(scores, None).shape == scores.shape


def test_kernel_dispatch_wiring(monkeypatch):
    """With the kernels reported available, the predicate and the call the model makes:
    a causal layer without a mask uses the causal kernel; with a mask, the masked kernel
    on mask | causal (the causal kernel cannot take an extra mask)."""
    from megatron import fused_kernels

    calls = []
    monkeypatch.setattr(fused_kernels, "fused_kernels_available", lambda: True)
    monkeypatch.setattr(fused_kernels, "fused_scale_mask_softmax",
                        lambda scores, mask, scale, mask_type: calls.append((mask, scale, mask_type)))
    softmax = FusedScaleMaskSoftmax(False, True, AttnMaskType.causal, True, scale=2.0)
    assert softmax.is_kernel_available(None, 2, 2, 32, 32, dtype=torch.bfloat16, device_type="cuda")
    assert not softmax.is_kernel_available(None, 2, 2, 16, 32, dtype=torch.bfloat16,
                                           device_type="cuda")  # causal kernel: square only
    scores = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    softmax.forward_fused_softmax(scores, None)
    padding = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    padding[..., 0, 1:] = True
    softmax.forward_fused_softmax(scores, padding)
    assert calls[0] == (None, 2.0, "causal")
    mask, scale, mask_type = calls[1]
    assert mask_type == "padding" and scale == 2.0
    assert torch.equal(mask, padding | causal_mask(4, 4))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="softmax_in_fp32"):
        FusedScaleMaskSoftmax(True, False, AttnMaskType.causal, True, softmax_in_fp32=False,
                              scale=2.0)
    with pytest.raises(ValueError, match="both"):
        FusedScaleMaskSoftmax(True, True, AttnMaskType.causal, True)
    softmax = FusedScaleMaskSoftmax(False, False, AttnMaskType.causal, True)
    with pytest.raises(ValueError, match=r"\[b, np, sq, sk\]"):
        softmax(torch.randn(3, 4, 4), None)
