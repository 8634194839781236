"""Tensor-parallel MLP: `dense_h_to_4h` (column split) -> GeLU or SwiGLU -> `dense_4h_to_h` (row split)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from megatron.core import tensor_parallel
from megatron.model.activations import bias_gelu, get_activation
from megatron.model.transformer_config import TransformerConfig


class ParallelMLP(torch.nn.Module):
    """h -> ffn -> h, returning (output, bias to add later) like upstream.

    With SwiGLU `dense_h_to_4h` produces 2 * ffn features. The full weight is laid out
    [gate (ffn rows) ; up (ffn rows)] and split with stride 2, so each rank holds
    [its gate rows ; its up rows] and applies SwiGLU locally; the layout is the same for
    every tensor-parallel size.
    """

    def __init__(self, config: TransformerConfig, layer_number: int) -> None:
        super().__init__()
        self.config = config
        swiglu = config.activation == "swiglu"
        prefix = f"layers.{layer_number - 1}.mlp"
        self.dense_h_to_4h = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, config.ffn_hidden_size * (2 if swiglu else 1), config=config,
            init_method=config.init_method, bias=config.add_bias_linear, gather_output=False,
            stride=2 if swiglu else 1, skip_bias_add=True, init_key=f"{prefix}.dense_h_to_4h")
        self.activation_func = get_activation(config.activation, openai=config.openai_gelu)
        # The bias+GeLU pair can be fused (same exact-GeLU math) only for the plain GeLU.
        self.bias_gelu_fusion = (config.bias_gelu_fusion and config.activation == "gelu"
                                 and not config.openai_gelu)
        self.dense_4h_to_h = tensor_parallel.RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=config.add_bias_linear,
            input_is_parallel=True, skip_bias_add=True, init_key=f"{prefix}.dense_4h_to_h")

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        intermediate, bias = self.dense_h_to_4h(hidden_states)
        if self.bias_gelu_fusion:
            intermediate = bias_gelu(intermediate, bias)
        else:
            if bias is not None:
                intermediate = intermediate + bias
            intermediate = self.activation_func(intermediate)
        return self.dense_4h_to_h(intermediate)
