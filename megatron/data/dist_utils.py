"""The little torch.distributed the data code needs: who builds caches, and agreement."""
from __future__ import annotations

import torch


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_builder_rank(group=None) -> bool:
    """True on the lowest global rank of `group` (or when not distributed)."""
    if not _initialized():
        return True
    if group is None:
        return torch.distributed.get_rank() == 0
    return torch.distributed.get_rank() == min(torch.distributed.get_process_group_ranks(group))


def all_ranks_succeeded(success: bool, group=None) -> bool:
    """All-reduce (min) of `success` over `group`; also the barrier that makes others wait."""
    if not _initialized():
        return success
    device = "cpu"
    if torch.distributed.get_backend(group) != "gloo":
        from deepspeed.accelerator import get_accelerator

        device = get_accelerator().current_device_name()
    flag = torch.tensor([1 if success else 0], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=group)
    return bool(flag.item())
