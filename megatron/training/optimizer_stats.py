"""Norms of the Adam states for --log-optimizer-states-to-tensorboard.

Reduced like upstream: over the data-parallel group when ZeRO partitions the states
(each rank holds a disjoint slice), then over the model-parallel group (TP x PP). Parameters
replicated across tensor-parallel ranks (norms, row-parallel biases) count once per rank.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.distributed as dist

_NAMES = ("momentum", "variance", "variance_sqrt", "weight")


def _reduce(tensor: torch.Tensor, op: str, group) -> None:
    # Through deepspeed.comm, like every other collective of a step (see megatron/training/nonfinite.py).
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        import deepspeed.comm as ds_dist

        ds_dist.all_reduce(tensor, op=getattr(ds_dist.ReduceOp, op), group=group)


def optimizer_state_norms(optimizer, *, zero_partitioned: bool) -> Dict[str, float]:
    """{"optimizer/<state>_l2": ..., "optimizer/<state>_abs_max": ...}; call on every rank."""
    from deepspeed.accelerator import get_accelerator

    from megatron.core import parallel_state

    base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the torch optimizer
    device = get_accelerator().current_device_name()
    squares = torch.zeros(len(_NAMES), dtype=torch.float64, device=device)
    maxima = torch.zeros(len(_NAMES), dtype=torch.float64, device=device)
    for group in base.param_groups:
        for param in group["params"]:
            state = base.state.get(param, {})
            if "exp_avg" not in state:
                continue
            variance = state["exp_avg_sq"].detach().double()
            tensors = (state["exp_avg"].detach().double(), variance, variance.sqrt(),
                       param.detach().double())
            for index, tensor in enumerate(tensors):
                squares[index] += tensor.pow(2).sum().to(device)
                maxima[index] = torch.maximum(maxima[index], tensor.abs().max().to(device))
    if zero_partitioned:
        _reduce(squares, "SUM", parallel_state.get_data_parallel_group())
        _reduce(maxima, "MAX", parallel_state.get_data_parallel_group())
    _reduce(squares, "SUM", parallel_state.get_model_parallel_group())
    _reduce(maxima, "MAX", parallel_state.get_model_parallel_group())
    stats = {}
    for index, name in enumerate(_NAMES):
        stats[f"optimizer/{name}_l2"] = math.sqrt(float(squares[index]))
        stats[f"optimizer/{name}_abs_max"] = float(maxima[index])
    return stats
