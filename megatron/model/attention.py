"""Tensor-parallel self-attention: fused QKV, core attention (GQA, rotary), output projection.

Activations are [s, b, h]. Each tensor-parallel rank owns `num_attention_heads / TP` query
heads and `num_key_value_heads / TP` key/value heads. With DeepSpeed-Ulysses
(`ds_sequence_parallel_size` > 1) s is this rank's chunk of the sequence and the core
attention is wrapped in `UlyssesAttention`.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from megatron.core import parallel_state, tensor_parallel
from megatron.model import recompute
from megatron.model.fused_softmax import AttnMaskType, FusedScaleMaskSoftmax
from megatron.model.kv_cache import KVCache
from megatron.model.rotary_pos_embedding import apply_rotary_pos_emb
from megatron.model.transformer_config import TransformerConfig
from megatron.model.utils import attention_mask_func


def sdpa_is_faster(query: torch.Tensor, *, dropout_active: bool) -> bool:
    """Whether torch's SDPA beats the classic path for this call. On GPUs it always does
    (flash / memory-efficient kernels). On CPU (torch 2.13, measured at the 125M shape,
    fwd+bwd, tests/bench/RESULTS.md issue 18) its flash kernel is ~1.6x faster in fp32 without
    dropout, but with attention dropout it falls back to a math path ~1.8x slower than the
    classic one, and in bf16 it is ~2.5x slower."""
    if query.is_cuda:
        return True
    return query.dtype == torch.float32 and not dropout_active


class CoreAttention(torch.nn.Module):
    """softmax(q k^T / sqrt(d) + mask) v for this rank's heads.

    Two paths computing the same function: the classic one (baddbmm, scale-mask-softmax
    module, dropout, bmm), where the fused CUDA softmax kernels plug in; and torch's
    `scaled_dot_product_attention` (flash kernels on GPUs). `use_flash_attn` and
    `use_classic_attention` force one; by default each call takes the faster one
    (`sdpa_is_faster`).
    """

    def __init__(self, config: TransformerConfig, layer_number: int,
                 attn_mask_type: AttnMaskType = AttnMaskType.causal) -> None:
        super().__init__()
        self.config = config
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.head_dim = config.kv_channels
        self.norm_factor = math.sqrt(self.head_dim)
        coeff = None
        if config.apply_query_key_layer_scaling:
            # Scores are divided by the layer number here and multiplied back inside the
            # softmax: the same function, but the fp16 scores stay in range.
            coeff = float(self.layer_number)
            self.norm_factor *= coeff
        self.scale_mask_softmax = FusedScaleMaskSoftmax(
            input_in_fp16=config.params_dtype == torch.float16,
            input_in_bf16=config.params_dtype == torch.bfloat16,
            attn_mask_type=attn_mask_type,
            scaled_masked_softmax_fusion=config.masked_softmax_fusion,
            mask_func=attention_mask_func,
            softmax_in_fp32=config.attention_softmax_in_fp32,
            scale=coeff)
        self.attention_dropout = torch.nn.Dropout(config.attention_dropout)

    def _dropout(self, probs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.config.attention_dropout == 0.0:
            return probs
        with self._dropout_rng():
            return self.attention_dropout(probs)

    def _dropout_rng(self):
        # Heads differ across TP ranks, so attention dropout needs the per-rank stream. With
        # sequence parallelism the whole layer already runs inside that stream.
        if self.config.sequence_parallel:
            return nullcontext()
        return tensor_parallel.get_cuda_rng_tracker().fork()

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """query [sq, b, np, hn], key/value [sk, b, np, hn] -> context [sq, b, np * hn]."""
        if self.config.use_flash_attn or (
                not self.config.use_classic_attention and sdpa_is_faster(
                    query, dropout_active=self.training and self.config.attention_dropout > 0.0)):
            context = self._sdpa(query, key, value, attention_mask)
        else:
            context = self._classic(query, key, value, attention_mask)
        sq, b = context.shape[:2]
        return context.reshape(sq, b, -1)

    def _classic(self, query, key, value, attention_mask):
        sq, b, np_, hn = query.shape
        sk = key.shape[0]
        q = query.reshape(sq, b * np_, hn).transpose(0, 1)
        k = key.reshape(sk, b * np_, hn).permute(1, 2, 0)
        scores = torch.empty(b * np_, sq, sk, dtype=query.dtype, device=query.device)
        scores = torch.baddbmm(scores, q, k, beta=0.0, alpha=1.0 / self.norm_factor)
        probs = self.scale_mask_softmax(scores.view(b, np_, sq, sk), attention_mask)
        probs = self._dropout(probs)
        v = value.reshape(sk, b * np_, hn).transpose(0, 1)
        context = torch.bmm(probs.view(b * np_, sq, sk), v)
        return context.view(b, np_, sq, hn).permute(2, 0, 1, 3)

    def _sdpa(self, query, key, value, attention_mask):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, np, s, hn]
        causal = self.attn_mask_type == AttnMaskType.causal
        sq, sk = q.shape[2], k.shape[2]
        mask = None if attention_mask is None else ~attention_mask  # SDPA: True = attend
        if causal and mask is None and sq == 1:
            # One new token against a cache: it is the last position and sees every key.
            causal = False
        elif causal and (mask is not None or sq != sk):
            # SDPA's is_causal aligns the triangle to the FIRST key when sq != sk (new tokens
            # against a key/value cache); the queries are the LAST sq positions.
            allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
            mask = allowed if mask is None else mask & allowed
            causal = False
        p = self.config.attention_dropout if self.training else 0.0
        rng = self._dropout_rng() if p > 0.0 else nullcontext()
        with rng:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                     is_causal=causal,
                                                     scale=1.0 / math.sqrt(self.head_dim))
        return context.permute(2, 0, 1, 3)


class ParallelAttention(torch.nn.Module):
    """Self-attention with upstream's module names: `query_key_value`, `dense`."""

    def __init__(self, config: TransformerConfig, layer_number: int, *,
                 attn_mask_type: AttnMaskType = AttnMaskType.causal) -> None:
        super().__init__()
        self.config = config
        self.layer_number = layer_number
        tp = config.tensor_model_parallel_size
        self.head_dim = config.kv_channels
        self.num_heads_per_rank = config.num_attention_heads // tp
        self.num_groups_per_rank = config.num_query_groups // tp
        self.queries_per_group = config.num_attention_heads // config.num_query_groups
        prefix = f"layers.{layer_number - 1}.self_attention"
        qkv_size = (config.num_attention_heads + 2 * config.num_query_groups) * self.head_dim
        self.query_key_value = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, qkv_size, config=config, init_method=config.init_method,
            bias=config.add_bias_linear, gather_output=False,
            init_key=f"{prefix}.query_key_value")
        self.core_attention = CoreAttention(config, layer_number, attn_mask_type)
        if config.ds_sequence_parallel_size > 1:
            from megatron.model.ulysses_attention import UlyssesAttention

            self.core_attention = UlyssesAttention(
                self.core_attention,
                sequence_parallel_group=parallel_state.get_sequence_parallel_group())
        self.dense = tensor_parallel.RowParallelLinear(
            config.num_attention_heads * self.head_dim, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=config.add_bias_linear,
            input_is_parallel=True, skip_bias_add=True, init_key=f"{prefix}.dense")

    def split_qkv(self, mixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split this rank's fused QKV output [s, b, local_qkv] into q, k, v.

        Layout (the classic Megatron one that existing checkpoints hold): the local output
        is [groups_per_rank, queries_per_group + 2, head_dim], i.e. for each key/value group
        its query heads, then its key head, then its value head. Without GQA
        (queries_per_group = 1) this is the per-head interleaved [heads_per_rank, 3, head_dim].
        Returns q [s, b, heads_per_rank, hn] and k, v [s, b, groups_per_rank, hn].
        """
        s, b = mixed.shape[:2]
        grouped = mixed.view(s, b, self.num_groups_per_rank, self.queries_per_group + 2,
                             self.head_dim)
        query = grouped[:, :, :, :self.queries_per_group].reshape(
            s, b, self.num_heads_per_rank, self.head_dim)
        key = grouped[:, :, :, self.queries_per_group]
        value = grouped[:, :, :, self.queries_per_group + 1]
        return query, key, value

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                rotary_pos_emb: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """hidden [s(/TP with sequence parallel), b, h] -> (output, bias to add later).

        With `kv_cache` (generation) `hidden_states` are the new tokens only: their keys and
        values join the cached ones and the queries attend to all of them (causally, aligned
        to the last key)."""
        mixed, _ = self.query_key_value(hidden_states)
        query, key, value = self.split_qkv(mixed)
        if rotary_pos_emb is not None:
            query = apply_rotary_pos_emb(query, rotary_pos_emb)
            key = apply_rotary_pos_emb(key, rotary_pos_emb)
        if kv_cache is not None:
            if self.config.ds_sequence_parallel_size > 1:
                raise ValueError("generation with a key/value cache needs "
                                 "--ds-sequence-parallel-size 1")
            key, value = kv_cache.extend(self.layer_number - 1, key, value)
        if self.queries_per_group > 1:
            # query head i reads key/value head i // queries_per_group
            key = key.repeat_interleave(self.queries_per_group, dim=2)
            value = value.repeat_interleave(self.queries_per_group, dim=2)
        if recompute.selective_recompute(self.config):
            # Selective recompute: keep q, k, v; the [b, np, s, s] scores and probabilities
            # are rebuilt in backward under the same dropout RNG.
            context = recompute.checkpoint_when_training(
                self.config, self, self.core_attention, query, key, value, attention_mask)
        else:
            context = self.core_attention(query, key, value, attention_mask)
        return self.dense(context)

