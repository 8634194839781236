"""How much memory a rank has used: the accelerator's allocator peak on a GPU, the process's
peak resident set on a CPU (where tensors live in ordinary process memory)."""
import resource

import torch
import torch.distributed as dist


def peak_memory_bytes() -> int:
    """This rank's peak memory so far, in bytes."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return int(accelerator.max_memory_allocated())


def max_over_ranks(value: int) -> int:
    """The largest `value` of all ranks, on every rank (collective when distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    # Through deepspeed.comm, like every other collective of a step.
    import deepspeed.comm as ds_dist
    from deepspeed.accelerator import get_accelerator

    tensor = torch.tensor([value], dtype=torch.int64,
                          device=get_accelerator().current_device_name())
    ds_dist.all_reduce(tensor, op=ds_dist.ReduceOp.MAX)
    return int(tensor.item())
