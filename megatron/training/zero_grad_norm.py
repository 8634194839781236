"""ZeRO-1/2's gradient norm on a CPU without DeepSpeed's fp64 copy of every gradient.

DeepSpeed 0.19 (`DeepSpeedZeroOptimizer.get_grad_norm_direct`) takes each gradient's 2-norm
in fp64 by first converting the whole gradient to a new fp64 tensor: on a CPU a memory-bound
pass writing and reading 8 bytes per parameter (~0.2 s of a 125M step) and 8 bytes per
parameter of the largest gradient held. Here each gradient's fp64 sum of squares is taken
over chunks that stay in a core's cache; everything around it is DeepSpeed's: gradients of
pipeline-replicated parameters skipped, tensor-parallel duplicates counted on
tensor-parallel rank 0 only, the per-gradient norms squared and summed in fp64, cast to
fp32, summed over the data- and model-parallel groups, square root, NaN/inf replaced by -1.

Only the order of the fp64 additions inside one gradient differs (chunks, then their sum),
about 1e-16 relative, far below the fp32 rounding of the result: the norm that is logged
and clipped with is the same fp32 number (tests/unit/training/test_zero_grad_norm.py
compares with DeepSpeed's method bit for bit). Other norm types and devices keep
DeepSpeed's method.
"""
from __future__ import annotations

import types

import torch

CHUNK_ELEMENTS = 1 << 16
"""Elements per chunk: 512 KiB as fp64, within a core's L2 cache."""


def fp64_sum_of_squares(tensor: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """sum(x^2) over `tensor` in `dtype`, one chunk of `chunk_elements` at a time."""
    total = torch.zeros((), dtype=dtype, device=tensor.device)
    for chunk in tensor.detach().reshape(-1).split(chunk_elements):
        wide = chunk.to(dtype)
        total += torch.dot(wide, wide)
    return total


def grad_norm_direct(optimizer, gradients, params, norm_type=2):
    """`DeepSpeedZeroOptimizer.get_grad_norm_direct` for the 2-norm on a CPU."""
    from deepspeed import comm
    from deepspeed.runtime.utils import (is_model_parallel_parameter,
                                         mask_nan_or_inf_with_val_inplace)
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer, get_norm_dtype

    if float(norm_type) != 2.0 or torch.device(optimizer.device).type != "cpu":
        return DeepSpeedZeroOptimizer.get_grad_norm_direct(optimizer, gradients, params, norm_type)
    norms = []
    real_gradients = (g for g in gradients if not getattr(g, "_zero_padding", False))
    for gradient, param in zip(real_gradients, params):
        if getattr(param, "ds_pipe_replicated", False):
            continue  # another stage counts it
        if is_model_parallel_parameter(param) or optimizer.model_parallel_rank == 0:
            norms.append(fp64_sum_of_squares(gradient, dtype=get_norm_dtype()).sqrt())
    if norms:
        total = torch.stack(norms).pow(2.0).sum().float()
    else:
        total = torch.tensor(0.0, dtype=torch.float32, device=optimizer.device)
    comm.all_reduce(total, op=comm.ReduceOp.SUM, group=optimizer.dp_process_group)
    optimizer._model_parallel_all_reduce(tensor=total, op=comm.ReduceOp.SUM)
    total = total.pow(0.5)
    mask_nan_or_inf_with_val_inplace(total, device=optimizer.device)
    return total


def use_chunked_grad_norm(optimizer) -> bool:
    """Give a CPU ZeRO-1/2 optimizer (DeepSpeed's, as the engine built it) this norm;
    False (nothing changed) for any other optimizer or device."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not isinstance(optimizer, DeepSpeedZeroOptimizer):
        return False
    if torch.device(optimizer.device).type != "cpu":
        return False
    optimizer.get_grad_norm_direct = types.MethodType(grad_norm_direct, optimizer)
    return True
