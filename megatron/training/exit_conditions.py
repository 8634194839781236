"""When a run stops early: --exit-interval, --exit-duration-in-mins, --exit-signal-handler.

Each condition is decided the same way on every rank (flags and elapsed time are reduced over
the world), so all ranks leave the loop after the same iteration and save together.
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist


def _any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    # Through deepspeed.comm, like every other collective of a step (see megatron/training/nonfinite.py).
    import deepspeed.comm as ds_dist
    from deepspeed.accelerator import get_accelerator

    value = torch.tensor([1 if flag else 0], dtype=torch.int32,
                         device=get_accelerator().current_device_name())
    ds_dist.all_reduce(value, op=ds_dist.ReduceOp.MAX)
    return bool(value.item())


class TerminationSignalHandler:
    """Records SIGTERM instead of dying, so the loop can finish the iteration and save."""

    def __init__(self, signal_number: int = signal.SIGTERM) -> None:
        self.signal_number = signal_number
        self.received = False
        self._previous = signal.signal(signal_number, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True

    def release(self) -> None:
        signal.signal(self.signal_number, self._previous)


class ExitConditions:
    """Decides after each iteration whether the run stops, and says why.

    exit_interval: stop when the iteration is a multiple of it. exit_duration_minutes: stop
    once this many minutes passed since `start_time` (monotonic seconds). signal_handler: stop
    when any rank received SIGTERM.
    """

    def __init__(self, *, exit_interval: Optional[int], exit_duration_minutes: Optional[float],
                 signal_handler: Optional[TerminationSignalHandler], start_time: float) -> None:
        self.exit_interval = exit_interval
        self.exit_duration_minutes = exit_duration_minutes
        self.signal_handler = signal_handler
        self.start_time = start_time

    def reason_to_stop(self, iteration: int) -> Optional[str]:
        if self.signal_handler is not None and _any_rank(self.signal_handler.received):
            return f"received SIGTERM (--exit-signal-handler); stopping after iteration {iteration}"
        if self.exit_duration_minutes is not None:
            minutes = (time.monotonic() - self.start_time) / 60.0
            if _any_rank(minutes > self.exit_duration_minutes):
                return (f"exiting after {minutes:.2f} minutes at iteration {iteration} "
                        f"(--exit-duration-in-mins {self.exit_duration_minutes})")
        if self.exit_interval and iteration % self.exit_interval == 0:
            return f"exiting at iteration {iteration} (--exit-interval {self.exit_interval})"
        return None
