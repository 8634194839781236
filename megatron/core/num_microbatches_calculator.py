"""Number of micro batches per step, constant or following a batch-size ramp-up.

Upstream semantics of `--rampup-batch-size <start> <increment> <ramp-up samples>`: the global
batch starts at `start` and grows by `increment` each time another
`ramp_samples / ((global - start) / increment)` samples have been consumed; once more than
`ramp_samples` samples are consumed it stays at the final global batch size.
"""
from __future__ import annotations

from typing import Optional, Sequence


class ConstantNumMicroBatches:
    """A fixed global batch: global / (micro * data parallel) micro batches per step."""

    def __init__(self, global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> None:
        per_micro_batch = micro_batch_size * data_parallel_size
        if global_batch_size <= 0 or per_micro_batch <= 0 or global_batch_size % per_micro_batch:
            raise ValueError(
                f"--global-batch-size {global_batch_size} must be a positive multiple of "
                f"--micro-batch-size {micro_batch_size} times data-parallel size {data_parallel_size}")
        self.micro_batch_size = micro_batch_size
        self.data_parallel_size = data_parallel_size
        self.current_global_batch_size = global_batch_size
        self.num_micro_batches = global_batch_size // per_micro_batch

    def get(self) -> int:
        """Micro batches per step at the current global batch size."""
        return self.num_micro_batches

    def get_current_global_batch_size(self) -> int:
        """Samples per step right now."""
        return self.current_global_batch_size

    def update(self, consumed_samples: int, consistency_check: bool = True) -> None:
        """Nothing changes for a constant batch."""


class RampupBatchsizeNumMicroBatches(ConstantNumMicroBatches):
    """Global batch growing linearly (in steps of `batch_size_increment`) over `rampup_samples`."""

    def __init__(self, start_batch_size: int, batch_size_increment: int, rampup_samples: int,
                 global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> None:
        super().__init__(global_batch_size, micro_batch_size, data_parallel_size)
        flag = f"--rampup-batch-size {start_batch_size} {batch_size_increment} {rampup_samples}"
        if start_batch_size <= 0 or batch_size_increment <= 0 or rampup_samples < 0:
            raise ValueError(f"{flag}: start and increment must be positive and ramp-up samples >= 0")
        difference = global_batch_size - start_batch_size
        if difference < 0 or difference % batch_size_increment:
            raise ValueError(f"{flag}: --global-batch-size {global_batch_size} minus the start batch "
                             f"size must be a non-negative multiple of the increment")
        per_micro_batch = micro_batch_size * data_parallel_size
        if start_batch_size % per_micro_batch or batch_size_increment % per_micro_batch:
            raise ValueError(f"{flag}: start and increment must be multiples of --micro-batch-size "
                             f"{micro_batch_size} times data-parallel size {data_parallel_size}")
        self.start_batch_size = start_batch_size
        self.batch_size_increment = batch_size_increment
        self.rampup_samples = rampup_samples
        self.global_batch_size = global_batch_size
        num_increments = difference // batch_size_increment
        self.rampup_samples_per_increment = rampup_samples / num_increments if num_increments else 0.0
        self.update(0, consistency_check=False)

    def update(self, consumed_samples: int, consistency_check: bool = True) -> None:
        """Set the global batch size for a run that has consumed `consumed_samples`."""
        if consumed_samples > self.rampup_samples or self.rampup_samples_per_increment == 0:
            current = self.global_batch_size
        else:
            steps = int(consumed_samples / self.rampup_samples_per_increment)
            current = min(self.start_batch_size + steps * self.batch_size_increment, self.global_batch_size)
        per_micro_batch = self.micro_batch_size * self.data_parallel_size
        if consistency_check and current % per_micro_batch:
            raise ValueError(f"global batch size {current} is not a multiple of micro batch times "
                             f"data-parallel size {per_micro_batch}")
        self.current_global_batch_size = current
        self.num_micro_batches = current // per_micro_batch


def build_num_microbatches_calculator(*, global_batch_size: int, micro_batch_size: int,
                                      data_parallel_size: int,
                                      rampup_batch_size: Optional[Sequence[int]] = None
                                      ) -> ConstantNumMicroBatches:
    """Constant calculator, or the ramp-up one when `rampup_batch_size` = (start, incr, samples)."""
    if rampup_batch_size is None:
        return ConstantNumMicroBatches(global_batch_size, micro_batch_size, data_parallel_size)
    if len(rampup_batch_size) != 3:
        raise ValueError("--rampup-batch-size takes 3 values: <start> <increment> <ramp-up samples>; "
                         f"got {list(rampup_batch_size)}")
    start, increment, samples = (int(v) for v in rampup_batch_size)
    return RampupBatchsizeNumMicroBatches(start, increment, samples, global_batch_size,
                                          micro_batch_size, data_parallel_size)


def count_train_iters(calculator: ConstantNumMicroBatches, train_samples: int,
                      rampup_samples: Optional[int]) -> int:
    """Iterations needed for `train_samples` samples (upstream `update_train_iters`)."""
    if rampup_samples is None:
        return train_samples // calculator.current_global_batch_size
    iterations = consumed = 0
    while consumed <= rampup_samples:
        calculator.update(consumed, consistency_check=False)
        consumed += calculator.get_current_global_batch_size()
        iterations += 1
    calculator.update(0, consistency_check=False)
    return iterations + max(train_samples - consumed, 0) // calculator.global_batch_size
