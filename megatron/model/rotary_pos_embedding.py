"""Rotary position embeddings (RoPE), rotating the first `rotary_dim` dims of each head.

The rotated part is split into two halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin),
the "rotate half" convention of GPT-NeoX and Megatron; the remaining dims pass through
(`--rotary-percent` < 1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:
    from megatron.model.transformer_config import TransformerConfig


class RotaryEmbedding(torch.nn.Module):
    """Angles for positions 0..seq_len-1: forward(seq_len) -> [seq_len, 1, 1, rotary_dim].

    Holds no parameters or buffers, so it adds nothing to state dicts.
    """

    def __init__(self, rotary_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and >= 2, got {rotary_dim}")
        self.rotary_dim = rotary_dim
        self.base = base

    def forward(self, seq_len: int, offset: int = 0, device: Any = None) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (self.base ** (exponents / self.rotary_dim))
        positions = torch.arange(offset, offset + seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles[:, None, None, :]


def build_rotary_embedding(config: "TransformerConfig") -> Optional[RotaryEmbedding]:
    """The angle generator GPTModel and GPTModelPipe both use; None without
    --use-rotary-position-embeddings."""
    if config.position_embedding_type != "rope":
        return None
    return RotaryEmbedding(config.rotary_dim, config.rotary_base)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate t [s, b, heads, head_dim] by angles [s, 1, 1, rotary_dim] (computed in fp32)."""
    rotary_dim = angles.shape[-1]
    t_rot, t_pass = t[..., :rotary_dim], t[..., rotary_dim:]
    cos, sin = angles.cos(), angles.sin()
    rotated = (t_rot.float() * cos + _rotate_half(t_rot.float()) * sin).to(t.dtype)
    return torch.cat((rotated, t_pass), dim=-1) if t_pass.shape[-1] else rotated
