"""Printing once per job: rank 0 for set-up messages, the last rank for training lines."""
import sys

import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _write_line(message: str) -> None:
    # One write of the whole line: lines printed by different ranks at the same moment then
    # never run into each other (print() writes the text and the newline separately).
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def print_rank_0(message: str) -> None:
    """Print on global rank 0 only (or when not distributed)."""
    if not _distributed() or dist.get_rank() == 0:
        _write_line(message)


def print_rank_last(message: str) -> None:
    """Print on the last global rank only: in a pipeline it holds the loss, as upstream logs it."""
    if not _distributed() or dist.get_rank() == dist.get_world_size() - 1:
        _write_line(message)
