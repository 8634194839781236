"""Autograd Functions around the fused softmax kernels, and the one-call dispatch.

Semantics (the torch path `FusedScaleMaskSoftmax` falls back to computes the same):
  "none":    softmax(scale * x)
  "padding": softmax(masked_fill(scale * x, mask, -10000)); the gradient is 0 where masked
  "causal":  softmax(scale * x) over keys j <= query i; exactly 0 for j > i
Arithmetic is fp32 inside the kernels; inputs and outputs are float16 or bfloat16.
"""
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .loader import load_fused_kernels
from .predicate import check_mask_type


def _kernels():
    kernels = load_fused_kernels()
    if kernels is None:
        raise RuntimeError(
            "the fused softmax kernels are not available on this machine (no CUDA device, or "
            "the extension failed to build); check fused_kernels_available() first and use the "
            "torch softmax path otherwise")
    return kernels


class ScaledUpperTriangMaskedSoftmax(torch.autograd.Function):
    """Causal softmax(scale * x) of [attn_batches, seq, seq] scores."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        probs = _kernels().scaled_upper_triang_masked_softmax_forward(inputs.contiguous(), scale)
        ctx.save_for_backward(probs)
        ctx.scale = scale
        return probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (probs,) = ctx.saved_tensors
        grad_input = _kernels().scaled_upper_triang_masked_softmax_backward(
            grad_output.contiguous(), probs, ctx.scale)
        return grad_input, None


class ScaledMaskedSoftmax(torch.autograd.Function):
    """softmax(masked_fill(scale * x, mask, -10000)) of [b, np, sq, sk] scores.

    `mask` is bool or uint8 (True = masked out) and broadcasts to the scores, e.g.
    [b, 1, sq, sk], [1, 1, sq, sk] or [b, 1, 1, sk].
    """

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        probs = _kernels().scaled_masked_softmax_forward(inputs.contiguous(), mask, scale)
        ctx.save_for_backward(probs, mask)
        ctx.scale = scale
        return probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        probs, mask = ctx.saved_tensors
        grad_input = _kernels().scaled_masked_softmax_backward(
            grad_output.contiguous(), probs, mask, ctx.scale)
        return grad_input, None, None


class ScaledSoftmax(torch.autograd.Function):
    """softmax(scale * x) of [b, np, sq, sk] scores, no mask."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        probs = _kernels().scaled_softmax_forward(inputs.contiguous(), scale)
        ctx.save_for_backward(probs)
        ctx.scale = scale
        return probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (probs,) = ctx.saved_tensors
        grad_input = _kernels().scaled_softmax_backward(grad_output.contiguous(), probs,
                                                        ctx.scale)
        return grad_input, None


def fused_scale_mask_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor],
                             scale: Optional[float], mask_type: str) -> torch.Tensor:
    """Softmax of [b, np, sq, sk] attention scores with the fused kernel for `mask_type`.

    Call it only where `fused_kernel_applies(...)` and `fused_kernels_available()` hold.
    "causal" builds the triangular mask itself and ignores `mask`; "padding" with `mask=None`
    is plain scaled softmax; "none" takes no mask. `scale=None` means 1. Differentiable.
    """
    check_mask_type(mask_type)
    if scores.dim() != 4:
        raise ValueError("scores must be [batch, heads, seq_q, seq_k], got shape "
                         f"{tuple(scores.shape)}")
    factor = 1.0 if scale is None else float(scale)
    if mask_type == "causal":
        batch, heads, seq_q, seq_k = scores.shape
        if seq_q != seq_k:
            raise ValueError(f"the causal kernel needs square scores, got seq_q={seq_q}, "
                             f"seq_k={seq_k}")
        probs = ScaledUpperTriangMaskedSoftmax.apply(
            scores.reshape(batch * heads, seq_q, seq_k), factor)
        return probs.view(batch, heads, seq_q, seq_k)
    if mask is not None:
        if mask_type == "none":
            raise ValueError("mask_type 'none' takes no mask; use mask_type='padding'")
        return ScaledMaskedSoftmax.apply(scores, mask, factor)
    return ScaledSoftmax.apply(scores, factor)
