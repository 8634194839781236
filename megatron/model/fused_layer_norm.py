"""LayerNorm and RMSNorm: apex's fused kernels on CUDA when apex is importable, torch otherwise.

Parameter names are `weight` (and `bias` for LayerNorm), as in upstream checkpoints. With
sequence parallelism the parameters are marked `sequence_parallel = True` so the training
step all-reduces their (partial) gradients over the tensor-parallel group.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=1)
def _apex_norms() -> Optional[Any]:
    """apex.normalization.fused_layer_norm when importable (looked up once, on first use)."""
    try:
        from apex.normalization import fused_layer_norm
    except Exception:  # noqa: BLE001 - any import failure means: use torch
        return None
    return fused_layer_norm


def _use_apex(x: torch.Tensor) -> Optional[Any]:
    if x.device.type != "cuda":
        return None
    return _apex_norms()


class LayerNorm(torch.nn.Module):
    """LayerNorm over the last dimension with affine weight and bias."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, *, sequence_parallel: bool = False,
                 params_dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=params_dtype, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=params_dtype, device=device))
        for param in (self.weight, self.bias):
            param.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        apex = _use_apex(x)
        if apex is not None:
            return apex.fused_layer_norm_affine(x, self.weight, self.bias, self.normalized_shape,
                                                self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype),
                            self.bias.to(x.dtype), self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"


class RMSNorm(torch.nn.Module):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, *, sequence_parallel: bool = False,
                 params_dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=params_dtype, device=device))
        self.weight.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        apex = _use_apex(x)
        if apex is not None:
            return apex.fused_rms_norm_affine(x, self.weight, self.normalized_shape, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"


def build_norm(config: Any, hidden_size: Optional[int] = None) -> torch.nn.Module:
    """The norm selected by `config.normalization` (`--normalization`)."""
    from megatron.model.utils import param_device

    cls = LayerNorm if config.normalization == "layernorm" else RMSNorm
    return cls(hidden_size or config.hidden_size, config.layernorm_epsilon,
               sequence_parallel=config.sequence_parallel, params_dtype=config.params_dtype,
               device=param_device(config))
