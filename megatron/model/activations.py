"""MLP activations: exact GeLU (default), OpenAI's tanh GeLU, SwiGLU, and bias+GeLU."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GeLU, x * Phi(x) with the erf (upstream's default F.gelu)."""
    return F.gelu(x)


def openai_gelu(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of GeLU (`--openai-gelu`; HF GPT-2's `gelu_new`)."""
    return F.gelu(x, approximate="tanh")


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a [..., 2f] input laid out [gate | up]: silu(gate) * up."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


def bias_gelu(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """GeLU(x + bias) with the exact erf GeLU.

    Upstream's fused bias-GeLU silently used the tanh approximation whenever the fusion
    was on; here the fusion switch never changes the function, only how it is computed.
    """
    return F.gelu(x if bias is None else x + bias)


def get_activation(name: str, *, openai: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation for TransformerConfig.activation / openai_gelu."""
    if name == "swiglu":
        return swiglu
    if name == "gelu":
        return openai_gelu if openai else gelu
    raise ValueError(f"unknown activation {name!r}; expected 'gelu' or 'swiglu'")
