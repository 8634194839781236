"""Splitting per-file work over the ranks and sharing the findings, so every rank reaches the
same decision about a checkpoint (and none is left waiting in a collective)."""
from __future__ import annotations

from typing import List, Sequence

import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_share(items: Sequence) -> list:
    """This rank's part of `items`: rank r takes items r, r + world, r + 2 * world, ..."""
    if not _distributed():
        return list(items)
    return list(items)[dist.get_rank()::dist.get_world_size()]


def gather_to_all_ranks(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank (collective)."""
    if not _distributed():
        return items
    gathered: List[list] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
