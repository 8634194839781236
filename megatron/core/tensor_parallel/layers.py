"""Tensor-parallel building blocks: column- and row-split linear layers and the
vocabulary-split embedding, with upstream Megatron's constructor signatures (keyword
arguments, a `ModelParallelConfig`, an `init_method`).

Two optional keywords go beyond upstream's: `init_key`, the parameter's global name, which
makes the initialization layout independent (see `initialization`), and `tp_group`, the
tensor-parallel process group (None: the one of `parallel_state.initialize_model_parallel`).
"""
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import few_rows_linear
from megatron.core.tensor_parallel.initialization import init_partitioned_
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
    tensor_parallel_group_size_rank,
)
from megatron.core.tensor_parallel.utils import VocabUtility, divide

_MODEL_PARALLEL_ATTRIBUTE_DEFAULTS = {
    "tensor_model_parallel": False,
    "partition_dim": -1,
    "partition_stride": 1,
}


def param_is_not_tensor_parallel_duplicate(param: torch.Tensor) -> bool:
    """True for split parameters and for TP rank 0's copy of replicated ones (count once)."""
    return (getattr(param, "tensor_model_parallel", False)
            or parallel_state.get_tensor_model_parallel_rank() == 0)


def set_tensor_model_parallel_attributes(tensor: torch.Tensor, is_parallel: bool, dim: int,
                                         stride: int) -> None:
    """Mark how `tensor` is split; DeepSpeed's gradient norm reads `tensor_model_parallel`."""
    tensor.tensor_model_parallel = is_parallel
    tensor.partition_dim = dim
    tensor.partition_stride = stride


def set_defaults_if_not_set_tensor_model_parallel_attributes(tensor: torch.Tensor) -> None:
    """Give an unsplit parameter the 'not split' attributes unless it already has some."""
    for attribute, value in _MODEL_PARALLEL_ATTRIBUTE_DEFAULTS.items():
        if not hasattr(tensor, attribute):
            setattr(tensor, attribute, value)


def copy_tensor_model_parallel_attributes(destination: torch.Tensor, source: torch.Tensor) -> None:
    """Copy the split attributes from `source` (e.g. to a master fp32 copy)."""
    for attribute, value in _MODEL_PARALLEL_ATTRIBUTE_DEFAULTS.items():
        setattr(destination, attribute, getattr(source, attribute, value))


def allreduce_sequence_parallel_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Sum, over the TP group, the gradients of parameters marked `sequence_parallel`.

    With sequence parallelism, replicated parameters applied to sequence chunks (the row
    layer's bias, layer norms) get only this chunk's gradient on each rank; the training
    loop calls this before the optimizer step.
    """
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return
    group = parallel_state.get_tensor_model_parallel_group()
    for param in parameters:
        if getattr(param, "sequence_parallel", False) and param.grad is not None:
            dist.all_reduce(param.grad, group=group)


def register_sequence_parallel_gradient_hooks(module: torch.nn.Module) -> int:
    """Make every `sequence_parallel` parameter's gradient the TP-group sum as it is computed.

    The same sum as `allreduce_sequence_parallel_gradients`, but done inside backward (the
    sum is linear, so per micro batch is exact), before an engine such as DeepSpeed's takes
    the gradients for its own reduction. Returns how many parameters got a hook.
    """
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return 0
    group = parallel_state.get_tensor_model_parallel_group()

    def summed(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    hooked = 0
    for param in module.parameters():
        if getattr(param, "sequence_parallel", False) and param.requires_grad:
            param.register_hook(summed)
            hooked += 1
    return hooked


def _param_device(config: ModelParallelConfig) -> torch.device:
    if config.use_cpu_initialization:
        return torch.device("cpu")
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def _make_weight(shape: Tuple[int, int], full_shape: Tuple[int, int], *, partition_dim: int,
                 stride: int, config: ModelParallelConfig, init_method: Callable,
                 init_key: Optional[str], rank: int, world_size: int
                 ) -> Tuple[Parameter, Optional[torch.Tensor]]:
    """This rank's weight shard and, with CPU initialization, the full weight it was cut from."""
    weight = torch.empty(shape, dtype=config.params_dtype, device=_param_device(config))
    full = None
    if config.perform_initialization:
        full = init_partitioned_(weight, full_shape=full_shape, partition_dim=partition_dim,
                                 stride=stride, init_method=init_method, seed=config.init_seed,
                                 key=None if init_key is None else f"{init_key}.weight",
                                 rank=rank, world_size=world_size,
                                 full_on_cpu=config.use_cpu_initialization)
    else:
        weight.zero_()
    weight = Parameter(weight)
    set_tensor_model_parallel_attributes(weight, True, partition_dim, stride)
    return weight, full


def _make_bias(size: int, config: ModelParallelConfig) -> Parameter:
    return Parameter(torch.zeros(size, dtype=config.params_dtype, device=_param_device(config)))


def _refuse_moe(layer: str, moe: bool) -> None:
    if moe:
        raise ValueError(f"{layer}: mixture-of-experts layers (moe=True) are not supported")


class _LinearWithAsyncAllreduce(torch.autograd.Function):
    """Linear layer whose input-gradient all-reduce overlaps the weight-gradient matmul."""

    @staticmethod
    def forward(ctx, input_, weight, bias, group):
        ctx.save_for_backward(input_, weight)
        ctx.use_bias = bias is not None
        ctx.group = group
        return F.linear(input_, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input_, weight = ctx.saved_tensors
        grad_input = grad_output.matmul(weight)
        handle = dist.all_reduce(grad_input, group=ctx.group, async_op=True)
        grad_output_2d = grad_output.reshape(-1, grad_output.size(-1))
        grad_weight = grad_output_2d.t().matmul(input_.reshape(-1, input_.size(-1)))
        grad_bias = grad_output_2d.sum(dim=0) if ctx.use_bias else None
        handle.wait()
        return grad_input, grad_weight, grad_bias, None


def linear_with_grad_accumulation_and_async_allreduce(
        input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        gradient_accumulation_fusion: bool, async_grad_allreduce: bool,
        sequence_parallel: bool, tp_group: Optional[Any] = None) -> torch.Tensor:
    """The column-parallel linear: `input` is replicated (or, with `sequence_parallel`,
    sequence-split and gathered here), `weight` is this rank's output slice."""
    if gradient_accumulation_fusion:
        raise ValueError("gradient_accumulation_fusion is not supported "
                         "(pass --no-gradient-accumulation-fusion)")
    group, world_size, _ = tensor_parallel_group_size_rank(tp_group)
    if sequence_parallel:
        input = gather_from_sequence_parallel_region(input, tensor_parallel_output_grad=True,
                                                     group=group)
    elif async_grad_allreduce and world_size > 1:
        return _LinearWithAsyncAllreduce.apply(input, weight, bias, group)
    else:
        input = copy_to_tensor_model_parallel_region(input, group)
    return few_rows_linear.linear(input, weight, bias)


class ColumnParallelLinear(torch.nn.Module):
    """Y = XA + b with A split along its output columns: weight is
    [output_size / TP, input_size]. Returns (output, bias if skip_bias_add else None).

    `skip_weight_param_allocation`: no weight of its own; forward must be given one.
    `keep_master_weight_for_test`: keep the full CPU-initialized weight as `master_weight`.
    `moe` / `enable_expert_tensor_parallelism`: upstream's signature; moe=True is refused.
    """

    def __init__(self, input_size: int, output_size: int, *, config: ModelParallelConfig,
                 init_method: Callable, bias: bool = True, gather_output: bool = False,
                 stride: int = 1, keep_master_weight_for_test: bool = False,
                 skip_bias_add: bool = False, skip_weight_param_allocation: bool = False,
                 moe: bool = False, enable_expert_tensor_parallelism: bool = False,
                 init_key: Optional[str] = None, tp_group: Optional[Any] = None) -> None:
        super().__init__()
        _refuse_moe("ColumnParallelLinear", moe)
        self.tp_group, world_size, rank = tensor_parallel_group_size_rank(tp_group)
        if config.sequence_parallel and gather_output:
            raise ValueError("ColumnParallelLinear: gather_output=True cannot be combined with "
                             "sequence_parallel (--sequence-parallel)")
        self.input_size, self.output_size = input_size, output_size
        self.output_size_per_partition = divide(output_size, world_size)
        self.gather_output, self.skip_bias_add = gather_output, skip_bias_add
        self.sequence_parallel = config.sequence_parallel
        self.async_tensor_model_parallel_allreduce = (
            config.async_tensor_model_parallel_allreduce and world_size > 1)
        self.master_weight = None
        if skip_weight_param_allocation:
            self.register_parameter("weight", None)
        else:
            self.weight, full = _make_weight(
                (self.output_size_per_partition, input_size), (output_size, input_size),
                partition_dim=0, stride=stride, config=config, init_method=init_method,
                init_key=init_key, rank=rank, world_size=world_size)
            if keep_master_weight_for_test:
                self.master_weight = full
        if bias:
            self.bias = _make_bias(self.output_size_per_partition, config)
            set_tensor_model_parallel_attributes(self.bias, True, 0, stride)
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`weight` overrides the layer's own (e.g. tied output embeddings)."""
        if weight is None:
            if self.weight is None:
                raise ValueError("ColumnParallelLinear built with skip_weight_param_allocation "
                                 "needs a weight in forward")
            weight = self.weight
        elif tuple(weight.shape) != (self.output_size_per_partition, self.input_size):
            raise ValueError(f"ColumnParallelLinear: the given weight has shape "
                             f"{tuple(weight.shape)}, expected "
                             f"{(self.output_size_per_partition, self.input_size)}")
        bias = None if self.skip_bias_add else self.bias
        output = linear_with_grad_accumulation_and_async_allreduce(
            input_, weight, bias, gradient_accumulation_fusion=False,
            async_grad_allreduce=self.async_tensor_model_parallel_allreduce,
            sequence_parallel=self.sequence_parallel, tp_group=self.tp_group)
        if self.gather_output:
            output = gather_from_tensor_model_parallel_region(output, self.tp_group)
        return output, (self.bias if self.skip_bias_add else None)


class RowParallelLinear(torch.nn.Module):
    """Y = XA + b with A split along its input rows: weight is [output_size,
    input_size / TP]; partial products are summed (or reduce-scattered along the
    sequence with sequence parallelism). The bias is replicated and added after the sum.
    Returns (output, bias if skip_bias_add else None)."""

    def __init__(self, input_size: int, output_size: int, *, config: ModelParallelConfig,
                 init_method: Callable, bias: bool = True, input_is_parallel: bool = False,
                 skip_bias_add: bool = False, stride: int = 1,
                 keep_master_weight_for_test: bool = False, moe: bool = False,
                 enable_expert_tensor_parallelism: bool = False,
                 init_key: Optional[str] = None, tp_group: Optional[Any] = None) -> None:
        super().__init__()
        _refuse_moe("RowParallelLinear", moe)
        self.tp_group, world_size, rank = tensor_parallel_group_size_rank(tp_group)
        if config.sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel (--sequence-parallel) needs "
                             "input_is_parallel=True")
        self.input_size, self.output_size = input_size, output_size
        self.input_size_per_partition = divide(input_size, world_size)
        self.input_is_parallel, self.skip_bias_add = input_is_parallel, skip_bias_add
        self.sequence_parallel = config.sequence_parallel
        self.weight, full = _make_weight(
            (output_size, self.input_size_per_partition), (output_size, input_size),
            partition_dim=1, stride=stride, config=config, init_method=init_method,
            init_key=init_key, rank=rank, world_size=world_size)
        self.master_weight = full if keep_master_weight_for_test else None
        if bias:
            self.bias = _make_bias(output_size, config)
            set_defaults_if_not_set_tensor_model_parallel_attributes(self.bias)
            # Each rank sees only its sequence chunk: the gradient needs a TP all-reduce.
            self.bias.sequence_parallel = config.sequence_parallel
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.input_is_parallel:
            input_ = scatter_to_tensor_model_parallel_region(input_, self.tp_group)
        partial = few_rows_linear.linear(input_, self.weight)
        if self.sequence_parallel:
            output = reduce_scatter_to_sequence_parallel_region(partial, self.tp_group)
        else:
            output = reduce_from_tensor_model_parallel_region(partial, self.tp_group)
        if self.skip_bias_add:
            return output, self.bias
        if self.bias is not None:
            output = output + self.bias
        return output, None


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding table split along the vocabulary: each rank looks up the ids in its
    range, zeros the rest, and the partial results are summed over the TP group."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_method: Callable,
                 config: ModelParallelConfig, init_key: Optional[str] = None,
                 tp_group: Optional[Any] = None) -> None:
        super().__init__()
        self.tp_group, world_size, rank = tensor_parallel_group_size_rank(tp_group)
        self.tensor_model_parallel_size = world_size
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.vocab_start_index, self.vocab_end_index = (
            VocabUtility.vocab_range_from_global_vocab_size(num_embeddings, rank, world_size))
        self.num_embeddings_per_partition = self.vocab_end_index - self.vocab_start_index
        self.weight, _ = _make_weight(
            (self.num_embeddings_per_partition, embedding_dim), (num_embeddings, embedding_dim),
            partition_dim=0, stride=1, config=config, init_method=init_method,
            init_key=init_key, rank=rank, world_size=world_size)

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        if self.tensor_model_parallel_size == 1:
            return F.embedding(input_, self.weight)
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local_ids = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        partial = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_model_parallel_region(partial, self.tp_group)
