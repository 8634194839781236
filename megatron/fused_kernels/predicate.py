"""When the fused softmax kernels apply: a pure function of the shapes, dtype and device.

`FusedScaleMaskSoftmax` asks this before dispatching; whatever it rejects goes to the exact
torch path. The bounds mirror what the CUDA sources handle (`fused_softmax.h`).
"""
from typing import Tuple

import torch

MASK_TYPES: Tuple[str, ...] = ("causal", "padding", "none")
# Longest key row: 1024 threads per row, 16 elements each (kMaxKeyLength in fused_softmax.h).
MAX_KEY_LENGTH = 16384
# One CUDA block serves at least one row, and a grid holds at most 2**31 - 1 blocks.
MAX_ROWS = 2**31 - 1
SUPPORTED_DTYPES: Tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def check_mask_type(mask_type: str) -> None:
    """Raises ValueError unless `mask_type` is one of MASK_TYPES."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")


def fused_kernel_applies(*, dtype: torch.dtype, mask_type: str, seq_len_q: int,
                         seq_len_k: int, batch: int, heads: int, device_type: str) -> bool:
    """True when a fused kernel computes softmax for scores [batch, heads, seq_len_q, seq_len_k].

    Requires: a CUDA device, float16 or bfloat16 scores, 1 <= seq_len_k <= MAX_KEY_LENGTH,
    non-empty batch/heads/queries with batch * heads * seq_len_q <= MAX_ROWS, and for the
    causal kernel square scores (seq_len_q == seq_len_k). Any key length is fine: lengths that
    are not multiples of 4 take the kernels' scalar-load variant. Whether the extension could be
    built is a separate question (`fused_kernels_available()`).
    """
    check_mask_type(mask_type)
    if device_type != "cuda" or dtype not in SUPPORTED_DTYPES:
        return False
    if min(batch, heads, seq_len_q, seq_len_k) < 1 or seq_len_k > MAX_KEY_LENGTH:
        return False
    if batch * heads * seq_len_q > MAX_ROWS:
        return False
    if mask_type == "causal" and seq_len_q != seq_len_k:
        return False
    return True
