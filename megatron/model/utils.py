"""Init methods, the attention mask function and the parameter-device rule."""
from __future__ import annotations

import math
from typing import Callable

import torch

InitMethod = Callable[[torch.Tensor], torch.Tensor]

# Value written into masked attention scores before the softmax, as upstream. Large enough
# that exp() underflows to exactly 0 in fp32/bf16/fp16 next to any unmasked score.
MASKED_SCORE = -10000.0


def init_method_normal(sigma: float) -> InitMethod:
    """Init method filling a tensor from N(0, sigma^2)."""

    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=sigma)

    return init_


def scaled_init_method_normal(sigma: float, num_layers: int) -> InitMethod:
    """Init method for output projections: N(0, (sigma / sqrt(2 * num_layers))^2)."""
    return init_method_normal(sigma / math.sqrt(2.0 * num_layers))


def attention_mask_func(attention_scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Write MASKED_SCORE where `attention_mask` is True (True = do not attend)."""
    return attention_scores.masked_fill(attention_mask, MASKED_SCORE)


def param_device(config) -> torch.device:
    """Where parameters are created: CPU with `--use-cpu-initialization`, else the
    accelerator's current device (same rule as the tensor-parallel layers)."""
    if config.use_cpu_initialization:
        return torch.device("cpu")
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())
