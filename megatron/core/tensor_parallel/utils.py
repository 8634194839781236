"""Small pure helpers for splitting tensors and vocabularies across tensor-parallel ranks."""
from typing import Sequence, Tuple

import torch


def ensure_divisibility(numerator: int, denominator: int) -> None:
    """Raise ValueError unless `numerator` is divisible by `denominator`."""
    if denominator <= 0 or numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by {denominator}")


def divide(numerator: int, denominator: int) -> int:
    """Exact integer division; ValueError when it is not exact."""
    ensure_divisibility(numerator, denominator)
    return numerator // denominator


def split_tensor_along_last_dim(tensor: torch.Tensor, num_partitions: int,
                                contiguous_split_chunks: bool = False) -> Sequence[torch.Tensor]:
    """Split `tensor` into `num_partitions` equal chunks along its last dimension."""
    last_dim_size = divide(tensor.size(-1), num_partitions)
    chunks = torch.split(tensor, last_dim_size, dim=-1)
    if contiguous_split_chunks:
        return tuple(chunk.contiguous() for chunk in chunks)
    return chunks


def split_along_dim_with_stride(tensor: torch.Tensor, dim: int, num_partitions: int,
                                rank: int, stride: int = 1) -> torch.Tensor:
    """This rank's slice of a full tensor, Megatron style with `stride`.

    The dimension is cut into `num_partitions * stride` equal blocks and rank r keeps
    blocks r, r + num_partitions, ... (stride > 1 keeps fused weights such as QKV or
    gate/up interleaved correctly), concatenated in order.
    """
    block = divide(tensor.size(dim), num_partitions * stride)
    blocks = torch.split(tensor, block, dim=dim)
    return torch.cat(blocks[rank::num_partitions], dim=dim)


class VocabUtility:
    """Which contiguous vocabulary range [first, last) a tensor-parallel rank owns."""

    @staticmethod
    def vocab_range_from_per_partition_vocab_size(per_partition_vocab_size: int, rank: int,
                                                  world_size: int) -> Tuple[int, int]:
        first = rank * per_partition_vocab_size
        return first, first + per_partition_vocab_size

    @staticmethod
    def vocab_range_from_global_vocab_size(global_vocab_size: int, rank: int,
                                           world_size: int) -> Tuple[int, int]:
        per_partition = divide(global_vocab_size, world_size)
        return VocabUtility.vocab_range_from_per_partition_vocab_size(per_partition, rank,
                                                                      world_size)


def split_tensor_into_1d_equal_chunks(tensor: torch.Tensor, num_chunks: int,
                                      rank: int) -> torch.Tensor:
    """This rank's chunk of the flattened tensor (sizes must divide evenly)."""
    flat = tensor.reshape(-1)
    size = divide(flat.numel(), num_chunks)
    return flat[rank * size:(rank + 1) * size].clone()

