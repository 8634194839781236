"""Broadcast a batch from the tensor-parallel source rank to the rest of its TP group."""
from typing import Dict, List, Mapping, Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state

_MAX_DIMS = 8


def _device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def _shapes_from_source(keys: List[str], data: Optional[Mapping[str, torch.Tensor]],
                        device: torch.device) -> Dict[str, List[int]]:
    """Every key's shape, as known on the source rank, shared with the group."""
    sizes = torch.full((len(keys) * _MAX_DIMS,), -1, dtype=torch.long, device=device)
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        for index, key in enumerate(keys):
            shape = data[key].shape
            if len(shape) > _MAX_DIMS:
                raise ValueError(f"broadcast_data: {key} has {len(shape)} dims, at most "
                                 f"{_MAX_DIMS} supported")
            for dim, size in enumerate(shape):
                sizes[index * _MAX_DIMS + dim] = size
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(sizes, parallel_state.get_tensor_model_parallel_src_rank(),
                       group=parallel_state.get_tensor_model_parallel_group())
    shapes = {}
    values = sizes.tolist()
    for index, key in enumerate(keys):
        row = values[index * _MAX_DIMS:(index + 1) * _MAX_DIMS]
        shapes[key] = [size for size in row if size >= 0]
    return shapes


def broadcast_data(keys: List[str], data: Optional[Mapping[str, torch.Tensor]],
                   datatype: torch.dtype) -> Dict[str, torch.Tensor]:
    """`{key: tensor}` on every TP rank, taken from TP rank 0's `data` (other ranks may
    pass None). All tensors must have dtype `datatype`."""
    device = _device()
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        if data is None:
            raise ValueError("broadcast_data: the tensor-parallel source rank needs data")
        for key in keys:
            if data[key].dtype != datatype:
                raise ValueError(f"broadcast_data: {key} has dtype {data[key].dtype}, "
                                 f"expected {datatype}")
    shapes = _shapes_from_source(keys, data, device)
    numels = [int(torch.Size(shapes[key]).numel()) for key in keys]
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        flat = torch.cat([data[key].contiguous().view(-1) for key in keys]).to(device)
    else:
        flat = torch.empty(sum(numels), dtype=datatype, device=device)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(flat, parallel_state.get_tensor_model_parallel_src_rank(),
                       group=parallel_state.get_tensor_model_parallel_group())
    output, offset = {}, 0
    for key, numel in zip(keys, numels):
        output[key] = flat.narrow(0, offset, numel).view(shapes[key])
        offset += numel
    return output
