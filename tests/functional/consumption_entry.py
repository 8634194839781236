"""Test-only entry point: pretrain_gpt.py reporting what the engine takes from the data.

The training iterator is wrapped in a counter, and after every training iteration each rank
that reads data prints

    consumed by the engine: rank R iteration I micro batches M samples S

M: micro batches the engine pulled from the iterator during that iteration (DeepSpeed's
engine or pipeline schedule does the pulling), S: the samples in them. Unlike the
"global batch size" and "consumed samples" of the log line, which come from the batch-size
calculator, these are what the step really used. Used by test_rampup.py.
"""
import sys
from pathlib import Path

MARKER = "consumed by the engine:"


class CountingIterator:
    """Passes micro batches through, counting them and their samples."""

    def __init__(self, iterator) -> None:
        self.iterator = iterator
        self.micro_batches = 0
        self.samples = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        self.micro_batches += 1
        self.samples += len(batch["text"])
        return batch


def main() -> int:
    import torch.distributed as dist

    import pretrain_gpt
    from megatron.training import data_iterators
    from megatron.training.engine import TrainingEngine

    build_data_iterators, train_step = data_iterators.build_data_iterators, TrainingEngine.train_step
    iteration = {"count": 0}

    def counting_build(*args, **kwargs):
        iterators = build_data_iterators(*args, **kwargs)
        if iterators.train is not None:
            iterators.train = CountingIterator(iterators.train)
        return iterators

    def reporting_step(self, data_iterator):
        iteration["count"] += 1
        if not isinstance(data_iterator, CountingIterator):
            return train_step(self, data_iterator)
        micro_batches, samples = data_iterator.micro_batches, data_iterator.samples
        result = train_step(self, data_iterator)
        print(f"{MARKER} rank {dist.get_rank()} iteration {iteration['count']} micro batches "
              f"{data_iterator.micro_batches - micro_batches} samples "
              f"{data_iterator.samples - samples}", flush=True)
        return result

    data_iterators.build_data_iterators = counting_build
    TrainingEngine.train_step = reporting_step
    return pretrain_gpt.main(sys.argv[1:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # pretrain_gpt, megatron
    import pretrain_gpt

    pretrain_gpt.exit_process(main())  # as pretrain_gpt.py itself ends
