"""`--profile pt|pt-full`: a torch.profiler trace of the steps `--profile_steps start,end`
(counted from 1 in this process, as upstream) on the ranks `--profile-ranks` (all by
default), one gzipped Chrome trace per rank in --tensorboard-dir, named `rank<R>.*.pt.trace.json.gz`
(Perfetto, chrome://tracing and tensorboard's profile plugin open it)."""
from __future__ import annotations

from typing import Optional

import torch

from megatron.config.schema import LoggingConfig


class StepProfiler:
    """Call `step_begin()` before and `step_end()` after every training step; does nothing
    unless this rank profiles."""

    def __init__(self, config: LoggingConfig, *, rank: int, device_name: str) -> None:
        self.step = 0
        self.start, self.end = config.profile_steps
        self.profiler: Optional[torch.profiler.profile] = None
        if config.profile is None:
            return
        if config.profile_ranks is not None and rank not in config.profile_ranks:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device_name == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=0, warmup=0, active=self.end - self.start + 1,
                                             repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(
                config.tensorboard_dir, worker_name=f"rank{rank}", use_gzip=True),
            with_stack=config.profile == "pt-full", record_shapes=config.profile == "pt-full")

    def step_begin(self) -> None:
        self.step += 1
        if self.profiler is not None and self.step == self.start:
            self.profiler.start()

    def step_end(self) -> None:
        if self.profiler is None or not self.start <= self.step <= self.end:
            return
        self.profiler.step()
        if self.step == self.end:
            self.profiler.stop()
            self.profiler = None

    def close(self) -> None:
        """Training ended inside the profiled range: write what was captured."""
        if self.profiler is not None and self.step >= self.start:
            self.profiler.stop()
        self.profiler = None
