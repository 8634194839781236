"""--log-params-norm and --log-num-zeros-in-grad: the parameter norm and the zero gradients.

Both count every parameter of the model once, as upstream does: a parameter replicated over
tensor-parallel ranks (norms, row-parallel biases) only on tensor rank 0, and a tied
embedding that DeepSpeed's pipeline engine keeps on two stages only on its first stage
(DeepSpeed marks the other copy `ds_pipe_replicated`); the sums are then taken over the
model-parallel group (TP x PP).

Gradients are only visible inside the optimizer step (under the pipeline engine the step
runs inside `train_batch`), so `GradZeroCounter` wraps the step of the engine's optimizer
and counts right before it. Without ZeRO every data-parallel rank holds the same reduced
gradients (counted on data-parallel rank 0 only); under ZeRO-1/2 (and DeepSpeed's bf16
optimizer) each rank holds the fragments of its own partition, found through DeepSpeed's
`_hp_mapping` (what `deepspeed.utils.safe_get_full_grad` reads), which are summed over the
data-parallel group. Alignment padding of the flat partitions is never counted.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist


def _is_counted(param: torch.Tensor, tensor_parallel_rank: int) -> bool:
    if getattr(param, "ds_pipe_replicated", False):
        return False
    return bool(getattr(param, "tensor_model_parallel", False)) or tensor_parallel_rank == 0


def local_params_square_sum(params: Iterable[torch.Tensor], *,
                            tensor_parallel_rank: int) -> torch.Tensor:
    """Sum of squares (float64) of the parameters this rank counts."""
    total = torch.zeros((), dtype=torch.float64)
    for param in params:
        if _is_counted(param, tensor_parallel_rank):
            total += param.detach().double().pow(2).sum().cpu()
    return total


def _partition_fragment(param: torch.Tensor) -> Optional[torch.Tensor]:
    """This data-parallel rank's slice of a ZeRO-partitioned gradient (None: none here)."""
    mapping = param._hp_mapping
    if mapping is None:
        return None
    fragment = mapping.get_lp_grad_fragment(param._index_in_param_group).reshape(-1)
    if fragment.numel() == param.numel():  # the bf16 optimizer keeps the whole gradient
        address = mapping.lp_fragment_address
        fragment = fragment.narrow(0, address.start, address.numel)
    return fragment


def local_grad_zero_counts(params: Iterable[torch.Tensor], *,
                           tensor_parallel_rank: int) -> Tuple[int, int]:
    """(zeros in this rank's ZeRO partition fragments, zeros in whole gradients) over the
    parameters this rank counts; a parameter without gradient counts nothing."""
    partitioned = whole = 0
    for param in params:
        if not _is_counted(param, tensor_parallel_rank):
            continue
        if hasattr(param, "_hp_mapping"):
            fragment = _partition_fragment(param)
            if fragment is not None:
                partitioned += fragment.numel() - int(torch.count_nonzero(fragment))
        elif param.grad is not None:
            whole += param.grad.numel() - int(torch.count_nonzero(param.grad))
    return partitioned, whole


def _groups():
    """(tensor-parallel rank, data-parallel rank, data-parallel group, model-parallel group);
    one process without initialized groups is rank 0 of everything."""
    from megatron.core import parallel_state

    if not (dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
        return 0, 0, None, None
    return (parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_group(),
            parallel_state.get_model_parallel_group())


def _sum(tensor: torch.Tensor, group) -> torch.Tensor:
    # Through deepspeed.comm, like every other collective of a step (see nonfinite.py).
    if group is not None and dist.get_world_size(group) > 1:
        import deepspeed.comm as ds_dist
        from deepspeed.accelerator import get_accelerator

        tensor = tensor.to(get_accelerator().current_device_name())
        ds_dist.all_reduce(tensor, op=ds_dist.ReduceOp.SUM, group=group)
    return tensor


def params_l2_norm(module: torch.nn.Module) -> float:
    """L2 norm of all the model's parameters; collective over the model-parallel group (every
    data-parallel replica holds the whole model, so no data-parallel sum)."""
    tensor_rank, _, _, model_group = _groups()
    squares = local_params_square_sum(module.parameters(), tensor_parallel_rank=tensor_rank)
    return math.sqrt(float(_sum(squares.reshape(1), model_group).item()))


def count_zeros_in_grads(module: torch.nn.Module) -> int:
    """Zero gradient entries of the whole model; collective over data- and model-parallel
    groups. Call where the reduced gradients live (right before the optimizer step)."""
    tensor_rank, data_rank, data_group, model_group = _groups()
    partitioned, whole = local_grad_zero_counts(module.parameters(),
                                                tensor_parallel_rank=tensor_rank)
    counts = torch.tensor([partitioned + (whole if data_rank == 0 else 0)], dtype=torch.float64)
    counts = _sum(_sum(counts, data_group), model_group)
    return int(counts.item())


class GradZeroCounter:
    """Wraps `optimizer.step` (the DeepSpeed engine's optimizer: the ZeRO or mixed-precision
    wrapper, or the client optimizer) to count the zero gradients right before each step."""

    def __init__(self, optimizer, module: torch.nn.Module) -> None:
        self.module = module
        self.last_count: Optional[int] = None
        self._step = optimizer.step
        optimizer.step = self._counting_step

    def _counting_step(self, *args, **kwargs):
        self.last_count = count_zeros_in_grads(self.module)
        return self._step(*args, **kwargs)
