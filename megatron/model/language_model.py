"""Embedding, the transformer language model (embedding + stack + optional untied head),
and the LM-head projection `parallel_lm_logits`."""
from __future__ import annotations

from typing import Optional

import torch

from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.initialization import layout_independent_init
from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce
from megatron.model.kv_cache import KVCache
from megatron.model.rotary_pos_embedding import build_rotary_embedding
from megatron.model.transformer import ParallelTransformer
from megatron.model.transformer_config import TransformerConfig
from megatron.model.utils import param_device


def parallel_lm_logits(input_: torch.Tensor, word_embeddings_weight: torch.Tensor,
                       parallel_output: bool, *, sequence_parallel: bool = False,
                       async_tensor_model_parallel_allreduce: bool = False) -> torch.Tensor:
    """Hidden [s, b, h] (or [s/TP, b, h] with sequence parallelism) -> logits [s, b, V/TP],
    gathered to [s, b, V] unless `parallel_output`."""
    logits = linear_with_grad_accumulation_and_async_allreduce(
        input_, word_embeddings_weight, None, gradient_accumulation_fusion=False,
        async_grad_allreduce=async_tensor_model_parallel_allreduce,
        sequence_parallel=sequence_parallel)
    if parallel_output:
        return logits
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


class Embedding(torch.nn.Module):
    """Vocab-parallel word embeddings + learned absolute positions + dropout.

    Output is [s, b, h]; with sequence parallelism this rank's [s/TP, b, h] chunk.
    """

    def __init__(self, config: TransformerConfig, *, add_position_embedding: Optional[bool] = None
                 ) -> None:
        super().__init__()
        self.config = config
        if add_position_embedding is None:
            add_position_embedding = config.position_embedding_type == "learned_absolute"
        self.add_position_embedding = add_position_embedding
        self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
            config.padded_vocab_size, config.hidden_size, init_method=config.init_method,
            config=config, init_key="embedding.word_embeddings")
        if add_position_embedding:
            self.position_embeddings = torch.nn.Embedding(
                config.max_position_embeddings, config.hidden_size, dtype=config.params_dtype,
                device=param_device(config))
            with torch.no_grad():
                if config.perform_initialization:
                    # Replicated on every TP rank: drawn from its own (seed, name) stream.
                    full = layout_independent_init(
                        self.position_embeddings.weight.shape, config.init_method,
                        seed=config.init_seed, key="embedding.position_embeddings.weight")
                    self.position_embeddings.weight.copy_(full)
                else:
                    self.position_embeddings.weight.zero_()
        self.embedding_dropout = torch.nn.Dropout(config.hidden_dropout)

    @property
    def word_embeddings_weight(self) -> torch.nn.Parameter:
        """The (vocab-split) word embedding matrix, shared with a tied LM head."""
        return self.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """input_ids, position_ids [b, s] -> embeddings [s, b, h]."""
        embeddings = self.word_embeddings(input_ids)
        if self.add_position_embedding:
            if position_ids is None:
                raise ValueError("position_ids are required with learned position embeddings")
            embeddings = embeddings + self.position_embeddings(position_ids)
        embeddings = embeddings.transpose(0, 1).contiguous()
        if self.config.fp32_residual_connection:
            embeddings = embeddings.float()
        if self.config.sequence_parallel:
            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
            if self.training and self.config.hidden_dropout > 0.0:
                with tensor_parallel.get_cuda_rng_tracker().fork():
                    embeddings = self.embedding_dropout(embeddings)
        else:
            embeddings = self.embedding_dropout(embeddings)
        return embeddings


class TransformerLanguageModel(torch.nn.Module):
    """`embedding`, `encoder` (the stack with its final norm) and, untied, `output_layer`:
    upstream's `language_model` module and parameter names."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.rotary_pos_emb = build_rotary_embedding(config)
        self.encoder = ParallelTransformer(config)
        if config.untie_embeddings_and_output_weights:
            self.output_layer = tensor_parallel.ColumnParallelLinear(
                config.hidden_size, config.padded_vocab_size, config=config,
                init_method=config.init_method, bias=False, gather_output=False,
                init_key="output_layer")

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor],
                kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        """-> final-normed hidden states [s(/TP), b, h]. With `kv_cache` the tokens continue
        the cached ones: rotary angles start at the cached length (learned positions come
        from `position_ids`). With DeepSpeed-Ulysses the tokens are this rank's chunk of the
        sequence, and the rotary angles start at the chunk's first position."""
        hidden = self.embedding(input_ids, position_ids)
        rotary = None
        if self.rotary_pos_emb is not None:
            offset = 0 if kv_cache is None else kv_cache.length
            if self.config.ds_sequence_parallel_size > 1:
                offset += parallel_state.get_sequence_parallel_rank() * input_ids.shape[1]
            rotary = self.rotary_pos_emb(input_ids.shape[1], offset=offset,
                                         device=input_ids.device)
        return self.encoder(hidden, attention_mask, rotary, kv_cache)
