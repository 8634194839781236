"""Scale + mask + softmax over attention scores, with an exact torch path.

`FusedScaleMaskSoftmax` is the single entry point the attention uses. It dispatches to a
fused CUDA kernel (`megatron.fused_kernels`) only when `is_kernel_available(...)` says the
kernel applies, and otherwise runs `forward_torch_softmax`, the exact reference the
kernels are tested against. On a non-CUDA device nothing of the kernels is imported.

Input: scores [b, np, sq, sk]; mask: bool, broadcastable to the scores, True = masked
(do not attend), or None.
"""
from __future__ import annotations

import enum
import functools
from typing import Any, Callable, Optional

import torch

from megatron.model.utils import MASKED_SCORE, attention_mask_func

MaskFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AttnMaskType(enum.Enum):
    """`padding`: only the given mask applies. `causal`: position i never attends to j > i
    (in addition to the given mask, if any)."""

    padding = 1
    causal = 2


def causal_mask(sq: int, sk: int, device: Any = None) -> torch.Tensor:
    """Bool [1, 1, sq, sk] mask, True above the diagonal (aligned to the last key).
    Shared between calls (every layer of every micro-batch asks for the same one): read only."""
    return _cached_causal_mask(sq, sk, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=8)
def _cached_causal_mask(sq: int, sk: int, device: torch.device) -> torch.Tensor:
    return torch.ones(sq, sk, dtype=torch.bool, device=device).triu(sk - sq + 1)[None, None]


class FusedScaleMaskSoftmax(torch.nn.Module):
    """softmax(mask(scale * scores)) with optional fp32 computation for half inputs.

    Args (as upstream): input_in_fp16 / input_in_bf16 say what dtype the scores arrive
    in; attn_mask_type is an `AttnMaskType`; scaled_masked_softmax_fusion allows the fused
    kernels (`--no-masked-softmax-fusion` forbids them); mask_func writes the mask into the
    scores; softmax_in_fp32 computes the softmax in fp32 and casts back; scale multiplies
    the scores first (None = 1; needs softmax_in_fp32 as upstream).
    """

    def __init__(self, input_in_fp16: bool, input_in_bf16: bool, attn_mask_type: AttnMaskType,
                 scaled_masked_softmax_fusion: bool, mask_func: MaskFunc = attention_mask_func,
                 softmax_in_fp32: bool = True, scale: Optional[float] = None) -> None:
        super().__init__()
        if input_in_fp16 and input_in_bf16:
            raise ValueError("input_in_fp16 and input_in_bf16 cannot both be set")
        if scale is not None and not softmax_in_fp32:
            raise ValueError("a softmax scale (query-key layer scaling) needs softmax_in_fp32")
        self.input_in_fp16 = input_in_fp16
        self.input_in_bf16 = input_in_bf16
        self.input_in_float16 = input_in_fp16 or input_in_bf16
        self.attn_mask_type = attn_mask_type
        self.scaled_masked_softmax_fusion = scaled_masked_softmax_fusion
        self.mask_func = mask_func
        self.softmax_in_fp32 = softmax_in_fp32
        self.scale = scale

    def forward(self, scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if scores.dim() != 4:
            raise ValueError(f"attention scores must be [b, np, sq, sk], got shape {tuple(scores.shape)}")
        b, np_, sq, sk = scores.shape
        if self.is_kernel_available(mask, b, np_, sq, sk, dtype=scores.dtype,
                                    device_type=scores.device.type):
            return self.forward_fused_softmax(scores, mask)
        return self.forward_torch_softmax(scores, mask)

    def _kernel_mask_type(self, mask: Optional[torch.Tensor]) -> str:
        # The causal kernel builds the triangle itself and cannot take an extra mask; a
        # causal layer given an explicit mask uses the masked kernel on (mask | causal).
        if self.attn_mask_type == AttnMaskType.causal and mask is None:
            return "causal"
        return "padding"

    def is_kernel_available(self, mask: Optional[torch.Tensor], b: int, np: int, sq: int,
                            sk: int, *, dtype: Optional[torch.dtype] = None,
                            device_type: str = "cuda") -> bool:
        """Whether a fused kernel computes exactly this case: fusion allowed
        (`--no-masked-softmax-fusion` not given), half-precision scores, and the kernels'
        own predicate (`megatron.fused_kernels.fused_kernel_applies`: CUDA device, length
        bounds, square scores for the causal kernel) plus a successful build."""
        if not (self.scaled_masked_softmax_fusion and self.input_in_float16):
            return False
        if device_type != "cuda":
            return False  # nothing CUDA-specific is imported on other devices
        from megatron import fused_kernels

        if dtype is None:
            dtype = torch.float16 if self.input_in_fp16 else torch.bfloat16
        if not fused_kernels.fused_kernel_applies(
                dtype=dtype, mask_type=self._kernel_mask_type(mask), seq_len_q=sq, seq_len_k=sk,
                batch=b, heads=np, device_type=device_type):
            return False
        return fused_kernels.fused_kernels_available()

    def forward_fused_softmax(self, scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The fused kernel (call only where `is_kernel_available` holds)."""
        from megatron import fused_kernels

        mask_type = self._kernel_mask_type(mask)
        if mask is not None and self.attn_mask_type == AttnMaskType.causal:
            sq, sk = scores.shape[-2:]
            mask = mask | causal_mask(sq, sk, scores.device)
        return fused_kernels.fused_scale_mask_softmax(scores, mask, self.scale, mask_type)

    def forward_torch_softmax(self, scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Exact torch implementation of the same function."""
        out_dtype = scores.dtype
        if self.input_in_float16 and self.softmax_in_fp32:
            scores = scores.float()
        if self.scale is not None:
            scores = scores * self.scale
        if self.attn_mask_type == AttnMaskType.causal:
            sq, sk = scores.shape[-2:]
            causal = causal_mask(sq, sk, scores.device)
            mask = causal if mask is None else (mask | causal)
        if mask is not None:
            scores = self.mask_func(scores, mask)
        probs = torch.softmax(scores, dim=-1)
        if self.input_in_float16 and self.softmax_in_fp32:
            probs = probs.to(out_dtype)
        return probs


__all__ = ["AttnMaskType", "FusedScaleMaskSoftmax", "causal_mask", "MASKED_SCORE"]
