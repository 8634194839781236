"""Shared helpers for the model tests: small configs, data, gathering TP shards."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state, tensor_parallel
from megatron.model.transformer_config import TransformerConfig

SEQ, BATCH, VOCAB = 16, 2, 128  # VOCAB: the padded size, the same for TP 1, 2 and 4

VARIANTS = {
    # Upstream GPT defaults: learned positions, GeLU, LayerNorm, MHA, tied head, biases.
    "default": dict(),
    # Llama-style: rotary on half of each head, SwiGLU, RMSNorm, 2 query heads per KV
    # head, untied head, no biases.
    "llama": dict(position_embedding_type="rope", rotary_percent=0.5, activation="swiglu",
                  normalization="rmsnorm", num_key_value_heads=4,
                  untie_embeddings_and_output_weights=True, add_bias_linear=False),
}


def make_config(variant: str = "default", *, tp: int = 1, pp: int = 1,
                sequence_parallel: bool = False, **overrides) -> TransformerConfig:
    """A 2-layer, h64, 8-head model with dropout off and layout-independent init."""
    kwargs = dict(num_layers=2, hidden_size=64, num_attention_heads=8,
                  max_position_embeddings=SEQ, seq_length=SEQ, padded_vocab_size=VOCAB,
                  hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
                  init_seed=1234, tensor_model_parallel_size=tp,
                  pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel)
    kwargs.update(VARIANTS[variant])
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def make_batch(seed: int = 0, *, document_mask: bool = False, batch: int = BATCH):
    """tokens, position_ids, attention_mask (None = causal, or a bool mask that also cuts
    at a document boundary), labels, loss_mask — identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB - 3, (batch, SEQ), generator=g)  # leave padded rows unused
    labels = torch.randint(0, VOCAB - 3, (batch, SEQ), generator=g)
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(batch, SEQ).contiguous()
    loss_mask = (torch.rand(batch, SEQ, generator=g) > 0.2).float()
    mask = None
    if document_mask:
        causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
        mask = causal.expand(batch, 1, SEQ, SEQ).clone()
        cut = SEQ // 2 - 3
        mask[0, 0, cut:, :cut] = True  # sample 0: a second document starts at `cut`
    return tokens, position_ids, mask, labels, loss_mask


def setup_parallel(tp: int, pp: int = 1, seed: int = 1234) -> None:
    parallel_state.initialize_model_parallel(tp, pp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def gather_tp(tensor: torch.Tensor, *, partition_dim: int, stride: int = 1) -> torch.Tensor:
    """Reassemble a full tensor from every TP rank's shard (inverse of the strided split)."""
    world_size = parallel_state.get_tensor_model_parallel_world_size()
    if world_size == 1:
        return tensor.detach().clone()
    shards = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(shards, tensor.detach().contiguous(),
                    group=parallel_state.get_tensor_model_parallel_group())
    blocks = [torch.chunk(shard, stride, dim=partition_dim) for shard in shards]
    return torch.cat([blocks[r][s] for s in range(stride) for r in range(world_size)],
                     dim=partition_dim)


def full_tensor(param: torch.Tensor, value: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The full (unsplit) value of `param` (or of `value` laid out like it)."""
    value = param if value is None else value
    if getattr(param, "tensor_model_parallel", False):
        return gather_tp(value, partition_dim=param.partition_dim,
                         stride=getattr(param, "partition_stride", 1))
    return value.detach().clone()


def full_params_and_grads(module: torch.nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    params, grads = {}, {}
    for name, param in module.named_parameters():
        params[name] = full_tensor(param)
        grads[name] = full_tensor(param, param.grad) if param.grad is not None else None
    return {"params": params, "grads": grads}


def shard_for_rank(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the full tensor `full` for parameter `param`."""
    from megatron.core.tensor_parallel.utils import split_along_dim_with_stride

    if not getattr(param, "tensor_model_parallel", False):
        return full
    return split_along_dim_with_stride(full, param.partition_dim,
                                       parallel_state.get_tensor_model_parallel_world_size(),
                                       parallel_state.get_tensor_model_parallel_rank(),
                                       getattr(param, "partition_stride", 1))


def load_full_state_dict(module: torch.nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy full (TP=1) tensors into a possibly tensor-parallel module, by name."""
    named = dict(module.named_parameters())
    missing = sorted(set(named) - set(full))
    unexpected = sorted(set(full) - set(named))
    if missing or unexpected:
        raise KeyError(f"missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(shard_for_rank(param, full[name]))
