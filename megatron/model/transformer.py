"""The pre-norm transformer layer and the layer stack with its final norm.

Layer (upstream order): input norm -> self-attention -> bias-dropout-add -> post-attention
norm -> MLP -> bias-dropout-add. Activations are [s, b, h] ([s/TP, b, h] between the
tensor-parallel regions with sequence parallelism).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import tensor_parallel
from megatron.model import recompute
from megatron.model.attention import ParallelAttention
from megatron.model.fused_layer_norm import build_norm
from megatron.model.fused_softmax import AttnMaskType
from megatron.model.kv_cache import KVCache
from megatron.model.mlp import ParallelMLP
from megatron.model.transformer_config import TransformerConfig


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor,
                     prob: float, training: bool) -> torch.Tensor:
    """residual + dropout(x + bias)."""
    if bias is not None:
        x = x + bias
    if training and prob > 0.0:
        x = F.dropout(x, p=prob, training=True)
    return residual + x


def sequence_parallel_rng(config: TransformerConfig):
    """With sequence parallelism each TP rank holds different tokens, so dropout outside
    the tensor-parallel regions must use the per-rank stream; otherwise nothing changes."""
    if config.sequence_parallel:
        return tensor_parallel.get_cuda_rng_tracker().fork()
    return nullcontext()


class ParallelTransformerLayer(torch.nn.Module):
    """One transformer layer. `layer_number` is GLOBAL and 1-based (it names the
    parameters for initialization and scales the attention scores)."""

    def __init__(self, config: TransformerConfig, layer_number: int, *,
                 self_attn_mask_type: AttnMaskType = AttnMaskType.causal) -> None:
        super().__init__()
        if layer_number < 1:
            raise ValueError(f"layer_number is 1-based, got {layer_number}")
        self.config = config
        self.layer_number = layer_number
        self.input_layernorm = build_norm(config)
        self.self_attention = ParallelAttention(config, layer_number,
                                                attn_mask_type=self_attn_mask_type)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = ParallelMLP(config, layer_number)

    def _norm(self, norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = norm(x)
        # With an fp32 residual stream the norm's output goes back to the params dtype.
        return out.to(self.config.params_dtype) if self.config.fp32_residual_connection else out

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        cfg = self.config
        normed = self._norm(self.input_layernorm, hidden_states)
        attention_output, attention_bias = self.self_attention(normed, attention_mask,
                                                               rotary_pos_emb, kv_cache)
        residual = normed if cfg.apply_residual_connection_post_layernorm else hidden_states
        hidden = bias_dropout_add(attention_output, attention_bias, residual,
                                  cfg.hidden_dropout, self.training)
        normed = self._norm(self.post_attention_layernorm, hidden)
        mlp_output, mlp_bias = self.mlp(normed)
        residual = normed if cfg.apply_residual_connection_post_layernorm else hidden
        return bias_dropout_add(mlp_output, mlp_bias, residual, cfg.hidden_dropout, self.training)


class ParallelTransformer(torch.nn.Module):
    """All `config.num_layers` layers (`layers.<i>`) and the `final_layernorm`.

    Activation checkpointing (legacy `--checkpoint-activations` and full recompute) runs
    the layers through `_checkpointed_forward`; see `megatron.model.recompute`.
    """

    def __init__(self, config: TransformerConfig, *,
                 self_attn_mask_type: AttnMaskType = AttnMaskType.causal) -> None:
        super().__init__()
        self.config = config
        self.layers = torch.nn.ModuleList([
            ParallelTransformerLayer(config, index + 1, self_attn_mask_type=self_attn_mask_type)
            for index in range(config.num_layers)])
        self.final_layernorm = build_norm(config)

    def _checkpointed_forward(self, hidden_states: torch.Tensor,
                              attention_mask: Optional[torch.Tensor],
                              rotary_pos_emb: Optional[torch.Tensor]) -> torch.Tensor:
        """The layers in chunks (a single plain chunk without recompute); checkpointed
        chunks keep only their input and are rerun in backward while training."""
        for start, end, checkpointed in recompute.layer_chunks(self.config, len(self.layers)):
            chunk = self._chunk(start, end)
            if checkpointed:
                hidden_states = recompute.checkpoint_when_training(
                    self.config, self, chunk, hidden_states, attention_mask, rotary_pos_emb)
            else:
                hidden_states = chunk(hidden_states, attention_mask, rotary_pos_emb)
        return hidden_states

    def _chunk(self, start: int, end: int):
        def run(hidden_states, attention_mask, rotary_pos_emb):
            for layer in self.layers[start:end]:
                hidden_states = layer(hidden_states, attention_mask, rotary_pos_emb)
            return hidden_states
        return run

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        """With `kv_cache` (generation, no backward) the layers run one after the other and
        the cache advances past the new tokens."""
        if kv_cache is not None:
            for layer in self.layers:
                hidden_states = layer(hidden_states, attention_mask, rotary_pos_emb, kv_cache)
            kv_cache.advance(hidden_states.shape[0])
            return self.final_layernorm(hidden_states)
        with sequence_parallel_rng(self.config):
            hidden_states = self._checkpointed_forward(hidden_states, attention_mask,
                                                       rotary_pos_emb)
        return self.final_layernorm(hidden_states)
