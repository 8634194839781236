"""Autograd-aware communication between tensor-parallel ranks.

Each mapping is a collective in forward paired with its adjoint in backward, so that
parallel layers compute exactly the gradient of the function they implement.
Activations are [sequence, batch, hidden]: tensor-parallel splits use the last
dimension, sequence-parallel splits use dimension 0.
"""
from typing import Any, Tuple

import torch
import torch.distributed as dist

from megatron.core import parallel_state


def _group_and_size() -> Tuple[Any, int]:
    group = parallel_state.get_tensor_model_parallel_group()
    return group, parallel_state.get_tensor_model_parallel_world_size()


def _all_gather_base(output: torch.Tensor, tensor: torch.Tensor, group: Any) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor, group=group)


def _reduce_scatter_base(output: torch.Tensor, tensor: torch.Tensor, group: Any) -> None:
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, tensor, group=group)


def all_reduce_tp(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group into a new tensor (input untouched)."""
    group, world_size = _group_and_size()
    if world_size == 1:
        return tensor
    result = tensor.contiguous().clone()
    dist.all_reduce(result, group=group)
    return result


def split_along_dim(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """This rank's equal chunk of `tensor` along `dim`."""
    _, world_size = _group_and_size()
    if world_size == 1:
        return tensor
    size = tensor.size(dim)
    if size % world_size:
        raise ValueError(f"dimension {dim} of size {size} is not divisible by the "
                         f"tensor-parallel size {world_size}")
    chunk = size // world_size
    rank = parallel_state.get_tensor_model_parallel_rank()
    return tensor.narrow(dim, rank * chunk, chunk).contiguous()


def gather_along_dim(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate every rank's `tensor` along `dim`, in rank order."""
    group, world_size = _group_and_size()
    if world_size == 1:
        return tensor
    tensor = tensor.movedim(dim, 0).contiguous()
    output = torch.empty((world_size * tensor.size(0),) + tuple(tensor.shape[1:]),
                         dtype=tensor.dtype, device=tensor.device)
    _all_gather_base(output, tensor, group)
    return output.movedim(0, dim).contiguous()


def reduce_scatter_along_first_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the group, each rank keeping its chunk of dimension 0."""
    group, world_size = _group_and_size()
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
    def forward(ctx, tensor):
        return tensor

    @staticmethod
    def backward(ctx, grad_output):
        return all_reduce_tp(grad_output)


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_tp(tensor)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _ScatterToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return split_along_dim(tensor, -1)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, -1)


class _GatherFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return gather_along_dim(tensor, -1)

    @staticmethod
    def backward(ctx, grad_output):
        return split_along_dim(grad_output, -1)


class _ScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return split_along_dim(tensor, 0)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, 0)


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tensor_parallel_output_grad):
        ctx.tensor_parallel_output_grad = tensor_parallel_output_grad
        return gather_along_dim(tensor, 0)

    @staticmethod
    def backward(ctx, grad_output):
        # When the consumer is tensor-parallel, each rank holds only a partial gradient of
        # the gathered tensor: sum them while scattering. Otherwise every rank already has
        # the full gradient and just keeps its own chunk.
        if ctx.tensor_parallel_output_grad:
            return reduce_scatter_along_first_dim(grad_output), None
        return split_along_dim(grad_output, 0), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return reduce_scatter_along_first_dim(tensor)

    @staticmethod
    def backward(ctx, grad_output):
        return gather_along_dim(grad_output, 0)


def copy_to_tensor_model_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient backward (input of a column split)."""
    return _CopyToTensorParallelRegion.apply(tensor)


def reduce_from_tensor_model_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce forward (sum of partial outputs); identity backward."""
    return _ReduceFromTensorParallelRegion.apply(tensor)


def scatter_to_tensor_model_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """Keep this rank's chunk of the last dimension; all-gather backward."""
    return _ScatterToTensorParallelRegion.apply(tensor)


def gather_from_tensor_model_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along the last dimension; keep this rank's chunk backward."""
    return _GatherFromTensorParallelRegion.apply(tensor)


def scatter_to_sequence_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """Keep this rank's chunk of the sequence dimension; all-gather backward."""
    return _ScatterToSequenceParallelRegion.apply(tensor)


def gather_from_sequence_parallel_region(tensor: torch.Tensor,
                                         tensor_parallel_output_grad: bool = True) -> torch.Tensor:
    """All-gather along the sequence dimension; backward reduce-scatters (when the
    consumer is tensor-parallel) or splits the gradient."""
    return _GatherFromSequenceParallelRegion.apply(tensor, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel_region(tensor: torch.Tensor) -> torch.Tensor:
    """Sum partial outputs and keep this rank's sequence chunk; all-gather backward."""
    return _ReduceScatterToSequenceParallelRegion.apply(tensor)
