"""Per-phase timers for --timing-log-level, printed in upstream's format.

Level 1: forward-backward (the whole step with the pipeline engine, whose train_batch also
applies the update) and optimizer (ZeRO engine). Level 2 adds forward-compute and
backward-compute (ZeRO engine). Times are summed over the log interval, divided by the number
of iterations, and gathered over all ranks as --timing-log-option says (max, minmax or all).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

TIMER_NAMES = ("forward-backward", "forward-compute", "backward-compute", "optimizer")


class _Timer:
    def __init__(self, barrier_allowed: bool) -> None:
        self.barrier_allowed = barrier_allowed
        self.elapsed = 0.0
        self.used = False
        self._start: Optional[float] = None

    def start(self, barrier: bool = False) -> None:
        """barrier: wait for every rank first (level-1 timers, unless
        --no-barrier-with-level-1-timing), so the time excludes waiting for stragglers."""
        if barrier and self.barrier_allowed:
            import deepspeed.comm as ds_dist

            ds_dist.barrier()
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self.elapsed += time.perf_counter() - self._start
            self.used = True
            self._start = None


class _NoTimer:
    def start(self, barrier: bool = False) -> None:
        pass

    def stop(self) -> None:
        pass


_NO_TIMER = _NoTimer()


class Timers:
    """`timers(name, level)` returns a timer that runs only when level <= --timing-log-level."""

    def __init__(self, *, log_level: int, log_option: str, barrier_with_level_1: bool) -> None:
        self.log_level = log_level
        self.log_option = log_option
        self.barrier_with_level_1 = barrier_with_level_1
        self._timers: Dict[str, _Timer] = {}

    def __call__(self, name: str, level: int):
        if level > self.log_level:
            return _NO_TIMER
        if name not in self._timers:
            self._timers[name] = _Timer(barrier_allowed=level == 1 and self.barrier_with_level_1)
        return self._timers[name]

    def report(self, normalizer: int) -> Optional[str]:
        """Collective: every rank calls it at the same iteration. Resets the timers."""
        if self.log_level == 0:
            return None
        import deepspeed.comm as ds_dist
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        names = list(TIMER_NAMES)
        local = torch.tensor([1000.0 * self._timers[n].elapsed / normalizer
                              if n in self._timers and self._timers[n].used else -1.0
                              for n in names], dtype=torch.float64,
                             device=get_accelerator().current_device_name())
        for timer in self._timers.values():
            timer.elapsed, timer.used = 0.0, False
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            gathered = [torch.empty_like(local) for _ in range(world)]
            ds_dist.all_gather(gathered, local)
            table = torch.stack(gathered).cpu()
        else:
            table = local.cpu().unsqueeze(0)
        return format_timers(names, table.tolist(), self.log_option)


def format_timers(names: List[str], per_rank: List[List[float]], option: str) -> Optional[str]:
    """Upstream's text for times in ms (per_rank[rank][timer]; negative = not run there)."""
    header = {"max": "(max) time across ranks (ms):", "minmax": "(min, max) time across ranks (ms):",
              "all": "times across ranks (ms):"}[option]
    lines = []
    for column, name in enumerate(names):
        values = [(rank, row[column]) for rank, row in enumerate(per_rank) if row[column] >= 0]
        if not values:
            continue
        times = [value for _, value in values]
        label = (name + " ").ljust(48, ".")
        if option == "max":
            lines.append(f"\n    {label}: {max(times):.2f}")
        elif option == "minmax":
            lines.append(f"\n    {label}: ({min(times):.2f}, {max(times):.2f})")
        else:
            lines.append(f"\n  {name}:" + "".join(f"\n     rank {rank:2d}: {value:.2f}"
                                                for rank, value in values))
    return header + "".join(lines) if lines else None
