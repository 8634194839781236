"""Batch samplers for pretraining and the DataLoader built on them.

`MegatronPretrainingSampler` ('single') walks the samples in order and resumes exactly from
`consumed_samples`; `MegatronPretrainingRandomSampler` ('cyclic') reshuffles every epoch
with its own generator.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import torch


def _check(total_samples: int, consumed_samples: int, micro_batch_size: int,
           data_parallel_rank: int, data_parallel_size: int) -> None:
    if total_samples <= 0:
        raise ValueError(f"dataset has no samples (total_samples={total_samples})")
    if micro_batch_size <= 0:
        raise ValueError(f"--micro-batch-size must be positive, got {micro_batch_size}")
    if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
        raise ValueError(f"data-parallel rank {data_parallel_rank} not in "
                         f"[0, {data_parallel_size})")
    if consumed_samples < 0:
        raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")


class MegatronPretrainingSampler:
    """Yields this rank's slice of each global micro-batch, from `consumed_samples` on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool = True) -> None:
        _check(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
               data_parallel_size)
        if consumed_samples >= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} >= dataset size "
                             f"{total_samples}: the run needs more training samples")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.global_micro_batch = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        start = self.data_parallel_rank * self.micro_batch_size
        batch_start = self.consumed_samples
        while batch_start + self.global_micro_batch <= self.total_samples:
            first = batch_start + start
            yield list(range(first, first + self.micro_batch_size))
            batch_start += self.global_micro_batch
        if not self.drop_last and batch_start < self.total_samples:
            tail = list(range(batch_start, self.total_samples))
            part = tail[start:start + self.micro_batch_size]
            if part:
                yield part


class MegatronPretrainingRandomSampler:
    """Per-epoch random order (upstream 'cyclic'); resumes mid-epoch from consumed_samples."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, *, data_sharding: bool = True,
                 seed: int = 1234) -> None:
        _check(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
               data_parallel_size)
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.global_micro_batch = micro_batch_size * data_parallel_size
        self.last_batch_size = total_samples % self.global_micro_batch
        self.data_sharding = data_sharding
        self.seed = seed
        if total_samples < self.global_micro_batch:
            raise ValueError(f"dataset of {total_samples} samples is smaller than one global "
                             f"micro-batch ({self.global_micro_batch})")

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        active = self.total_samples - self.last_batch_size
        epoch = self.consumed_samples // active
        in_epoch = self.consumed_samples % active
        if in_epoch % self.global_micro_batch:
            raise ValueError(f"consumed_samples {self.consumed_samples} is not a multiple of "
                             f"the global micro-batch {self.global_micro_batch}")
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        if self.data_sharding:
            bucket = (self.total_samples // self.global_micro_batch) * self.micro_batch_size
            offset = in_epoch // self.data_parallel_size
            base = self.data_parallel_rank * bucket
            order = [base + i for i in torch.randperm(bucket, generator=generator).tolist()[offset:]]
        else:
            full = (self.total_samples // self.micro_batch_size) * self.micro_batch_size
            order = torch.randperm(full, generator=generator).tolist()[in_epoch:]
            order = order[self.data_parallel_rank::self.data_parallel_size]
        for i in range(0, len(order) - self.micro_batch_size + 1, self.micro_batch_size):
            self.consumed_samples += self.global_micro_batch
            yield order[i:i + self.micro_batch_size]


def build_pretraining_data_loader(dataset: Optional[torch.utils.data.Dataset],
                                  consumed_samples: int, *, micro_batch_size: int,
                                  data_parallel_rank: int, data_parallel_size: int,
                                  dataloader_type: str = "single", num_workers: int = 0,
                                  seed: int = 1234, data_sharding: bool = True
                                  ) -> Optional[torch.utils.data.DataLoader]:
    """DataLoader over `dataset` for `--dataloader-type` single or cyclic (None for None)."""
    if dataset is None:
        return None
    if num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {num_workers}")
    if dataloader_type == "single":
        sampler = MegatronPretrainingSampler(len(dataset), consumed_samples, micro_batch_size,
                                             data_parallel_rank, data_parallel_size)
    elif dataloader_type == "cyclic":
        sampler = MegatronPretrainingRandomSampler(
            len(dataset), consumed_samples, micro_batch_size, data_parallel_rank,
            data_parallel_size, data_sharding=data_sharding, seed=seed)
    else:
        raise ValueError(f"--dataloader-type {dataloader_type!r}: expected single or cyclic")
    from deepspeed.accelerator import get_accelerator

    pin = get_accelerator().device_name() != "cpu"
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin, generator=generator)
