"""How each GPTModel parameter is split over tensor-parallel ranks, and the merge and split
that move between one full tensor and the per-rank shards.

The rules follow the layers (docs/formats.md, section 4): `query_key_value`,
`dense_h_to_4h` (stride 2 with SwiGLU: every rank holds [its gate rows; its up rows]), the
word embeddings and an untied output layer are split by rows; `dense` and `dense_4h_to_h`
weights by columns; norms, position embeddings and the row-parallel biases are replicated.
Names are GPTModel's (`language_model.encoder.layers.0.mlp.dense_h_to_4h.weight`); only the
suffix matters, so the pipeline engine's per-layer names work too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass(frozen=True)
class Partition:
    """A tensor split along `dim`; with `stride` s each rank's shard is s blocks, block j
    holding this rank's part of the j-th of s equal blocks of the full tensor."""
    dim: int
    stride: int = 1


_ROW_SPLIT = ("word_embeddings.weight", "output_layer.weight", "lm_head.weight",
              "query_key_value.weight", "query_key_value.bias")
_MLP_IN = ("dense_h_to_4h.weight", "dense_h_to_4h.bias")
_COLUMN_SPLIT = ("self_attention.dense.weight", "dense_4h_to_h.weight")


def partition_of(name: str, *, swiglu: bool) -> Optional[Partition]:
    """How parameter `name` is split over tensor-parallel ranks; None when replicated."""
    if name.endswith(_ROW_SPLIT):
        return Partition(dim=0)
    if name.endswith(_MLP_IN):
        return Partition(dim=0, stride=2 if swiglu else 1)
    if name.endswith(_COLUMN_SPLIT):
        return Partition(dim=1)
    return None


def merge_shards(shards: Sequence[torch.Tensor], partition: Optional[Partition]) -> torch.Tensor:
    """The full tensor from the shards of ranks 0..TP-1 (the first shard when replicated)."""
    if partition is None or len(shards) == 1:
        return shards[0]
    blocks = [torch.chunk(shard, partition.stride, dim=partition.dim) for shard in shards]
    return torch.cat([blocks[rank][block] for block in range(partition.stride)
                      for rank in range(len(shards))], dim=partition.dim)


def split_full(full: torch.Tensor, partition: Optional[Partition], *,
               tensor_model_parallel_size: int) -> List[torch.Tensor]:
    """The shards of ranks 0..TP-1 of `full` (the inverse of `merge_shards`); every rank gets
    the full tensor when replicated. Raises ValueError when the size does not divide."""
    size = tensor_model_parallel_size
    if partition is None or size == 1:
        return [full] * size
    length = full.shape[partition.dim]
    if length % (size * partition.stride):
        raise ValueError(f"a dimension of {length} does not split into {size} tensor-parallel "
                         f"ranks" + (f" x {partition.stride} blocks" if partition.stride > 1 else ""))
    blocks = torch.chunk(full, partition.stride, dim=partition.dim)
    per_block = [torch.chunk(block, size, dim=partition.dim) for block in blocks]
    return [torch.cat([per_block[block][rank] for block in range(partition.stride)],
                      dim=partition.dim).contiguous() for rank in range(size)]
