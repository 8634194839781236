"""Fused CUDA softmax kernels for attention (scale + mask + softmax, fp16/bf16).

Dispatch from the model, with the exact torch path as the fallback:

    if fused_kernel_applies(dtype=..., mask_type=..., seq_len_q=..., seq_len_k=..., batch=...,
                            heads=..., device_type=scores.device.type) and fused_kernels_available():
        probs = fused_scale_mask_softmax(scores, mask, scale, mask_type)

Importing this package compiles and imports nothing CUDA-specific; the extension is built on
the first `fused_kernels_available()` / `load_fused_kernels()` call on a CUDA machine.
"""
from .loader import fused_kernels_available, fused_kernels_cache_dir, load_fused_kernels
from .predicate import MASK_TYPES, MAX_KEY_LENGTH, fused_kernel_applies
from .softmax_functions import (
    ScaledMaskedSoftmax,
    ScaledSoftmax,
    ScaledUpperTriangMaskedSoftmax,
    fused_scale_mask_softmax,
)

__all__ = [
    "MASK_TYPES",
    "MAX_KEY_LENGTH",
    "ScaledMaskedSoftmax",
    "ScaledSoftmax",
    "ScaledUpperTriangMaskedSoftmax",
    "fused_kernel_applies",
    "fused_kernels_available",
    "fused_kernels_cache_dir",
    "fused_scale_mask_softmax",
    "load_fused_kernels",
]
