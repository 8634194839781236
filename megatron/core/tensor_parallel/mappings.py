"""Autograd-aware communication between tensor-parallel ranks.

Each mapping is a collective in forward paired with its adjoint in backward, so that
parallel layers compute exactly the gradient of the function they implement.
Activations are [sequence, batch, hidden]: tensor-parallel splits use the last
dimension, sequence-parallel splits use dimension 0.

Every function takes an optional `group`; None means the tensor-parallel group of
`parallel_state.initialize_model_parallel`.
"""
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.core import parallel_state


def tensor_parallel_group_size_rank(group: Optional[Any] = None) -> Tuple[Any, int, int]:
    """(group, its size, this rank's index in it); None means the tensor-parallel group."""
    group = parallel_state.get_tensor_model_parallel_group_if_none(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"rank {dist.get_rank()} is not a member of the tensor-parallel "
                         "group it was given (tp_group)")
    return group, dist.get_world_size(group), rank


def _alone(group: Optional[Any]) -> bool:
    """The group has one rank: every mapping is the identity both ways, so the wrappers
    below return their input without an autograd node (~40 us a call on CPU, 24+ calls a
    decode step)."""
    return tensor_parallel_group_size_rank(group)[1] == 1


def _all_gather_base(output: torch.Tensor, tensor: torch.Tensor, group: Any) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor, group=group)


def _reduce_scatter_base(output: torch.Tensor, tensor: torch.Tensor, group: Any) -> None:
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, tensor, group=group)


def all_reduce_tp(tensor: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """Sum over the tensor-parallel group into a new tensor (input untouched)."""
    group, world_size, _ = tensor_parallel_group_size_rank(group)
    if world_size == 1:
        return tensor
    result = tensor.contiguous().clone()
    dist.all_reduce(result, group=group)
    return result


def split_along_dim(tensor: torch.Tensor, dim: int, group: Optional[Any] = None) -> torch.Tensor:
    """This rank's equal chunk of `tensor` along `dim`."""
    _, world_size, rank = tensor_parallel_group_size_rank(group)
    if world_size == 1:
        return tensor
    size = tensor.size(dim)
    if size % world_size:
        raise ValueError(f"dimension {dim} of size {size} is not divisible by the "
                         f"tensor-parallel size {world_size}")
    chunk = size // world_size
    return tensor.narrow(dim, rank * chunk, chunk).contiguous()


def gather_along_dim(tensor: torch.Tensor, dim: int, group: Optional[Any] = None) -> torch.Tensor:
    """Concatenate every rank's `tensor` along `dim`, in rank order."""
    group, world_size, _ = tensor_parallel_group_size_rank(group)
    if world_size == 1:
        return tensor
    tensor = tensor.movedim(dim, 0).contiguous()
    output = torch.empty((world_size * tensor.size(0),) + tuple(tensor.shape[1:]),
                         dtype=tensor.dtype, device=tensor.device)
    _all_gather_base(output, tensor, group)
    return output.movedim(0, dim).contiguous()


def reduce_scatter_along_first_dim(tensor: torch.Tensor,
                                   group: Optional[Any] = None) -> torch.Tensor:
    """Sum over the group, each rank keeping its chunk of dimension 0."""
    group, world_size, _ = tensor_parallel_group_size_rank(group)
    if world_size == 1:
        return tensor
    if tensor.size(0) % world_size:
        raise ValueError(f"dimension 0 of size {tensor.size(0)} is not divisible by the "
                         f"tensor-parallel size {world_size}")
    tensor = tensor.contiguous()
    output = torch.empty((tensor.size(0) // world_size,) + tuple(tensor.shape[1:]),
                         dtype=tensor.dtype, device=tensor.device)
    _reduce_scatter_base(output, tensor, group)
    return output


class _CopyToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return tensor

    @staticmethod
    def backward(ctx, grad_output):
        return all_reduce_tp(grad_output, ctx.group), None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        return all_reduce_tp(tensor, group)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class _ScatterToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return split_along_dim(tensor, -1, group)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, -1, ctx.group), None


class _GatherFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return gather_along_dim(tensor, -1, group)

    @staticmethod
    def backward(ctx, grad_output):
        return split_along_dim(grad_output, -1, ctx.group), None


class _ScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return split_along_dim(tensor, 0, group)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, 0, ctx.group), None


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tensor_parallel_output_grad, group):
        ctx.tensor_parallel_output_grad = tensor_parallel_output_grad
        ctx.group = group
        return gather_along_dim(tensor, 0, group)

    @staticmethod
    def backward(ctx, grad_output):
        # When the consumer is tensor-parallel, each rank holds only a partial gradient of
        # the gathered tensor: sum them while scattering. Otherwise every rank already has
        # the full gradient and just keeps its own chunk.
        if ctx.tensor_parallel_output_grad:
            return reduce_scatter_along_first_dim(grad_output, ctx.group), None, None
        return split_along_dim(grad_output, 0, ctx.group), None, None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return reduce_scatter_along_first_dim(tensor, group)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, 0, ctx.group), None


def copy_to_tensor_model_parallel_region(tensor: torch.Tensor,
                                         group: Optional[Any] = None) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient backward (input of a column split)."""
    if _alone(group):
        return tensor
    return _CopyToTensorParallelRegion.apply(tensor, group)


def reduce_from_tensor_model_parallel_region(tensor: torch.Tensor,
                                             group: Optional[Any] = None) -> torch.Tensor:
    """All-reduce forward (sum of partial outputs); identity backward."""
    if _alone(group):
        return tensor
    return _ReduceFromTensorParallelRegion.apply(tensor, group)


def scatter_to_tensor_model_parallel_region(tensor: torch.Tensor,
                                            group: Optional[Any] = None) -> torch.Tensor:
    """Keep this rank's chunk of the last dimension; all-gather backward."""
    if _alone(group):
        return tensor
    return _ScatterToTensorParallelRegion.apply(tensor, group)


def gather_from_tensor_model_parallel_region(tensor: torch.Tensor,
                                             group: Optional[Any] = None) -> torch.Tensor:
    """All-gather along the last dimension; keep this rank's chunk backward."""
    if _alone(group):
        return tensor
    return _GatherFromTensorParallelRegion.apply(tensor, group)


def scatter_to_sequence_parallel_region(tensor: torch.Tensor,
                                        group: Optional[Any] = None) -> torch.Tensor:
    """Keep this rank's chunk of the sequence dimension; all-gather backward."""
    if _alone(group):
        return tensor
    return _ScatterToSequenceParallelRegion.apply(tensor, group)


def gather_from_sequence_parallel_region(tensor: torch.Tensor,
                                         tensor_parallel_output_grad: bool = True,
                                         group: Optional[Any] = None) -> torch.Tensor:
    """All-gather along the sequence dimension; backward reduce-scatters (when the
    consumer is tensor-parallel) or splits the gradient."""
    if _alone(group):
        return tensor
    return _GatherFromSequenceParallelRegion.apply(tensor, tensor_parallel_output_grad, group)


def reduce_scatter_to_sequence_parallel_region(tensor: torch.Tensor,
                                               group: Optional[Any] = None) -> torch.Tensor:
    """Sum partial outputs and keep this rank's sequence chunk; all-gather backward."""
    if _alone(group):
        return tensor
    return _ReduceScatterToSequenceParallelRegion.apply(tensor, group)
