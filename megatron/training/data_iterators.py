"""Datasets, loaders and iterators for training, validation and test."""
import itertools
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from megatron.config.schema import TrainingConfig
from megatron.core import parallel_state
from megatron.training.train_state import TrainState


def train_valid_test_num_samples(config: TrainingConfig) -> Tuple[int, int, int]:
    """Samples each split must provide, as upstream sizes them."""
    schedule, batch = config.schedule, config.batch
    train = schedule.train_samples or schedule.train_iters * batch.global_batch_size
    evaluations = schedule.train_iters // schedule.eval_interval + 1 if schedule.eval_interval else 1
    valid = evaluations * schedule.eval_iters * batch.global_batch_size
    test = schedule.eval_iters * batch.global_batch_size
    return train, valid, test


@dataclass
class DataIterators:
    """Iterators over micro batches; None on ranks that receive data by broadcast."""

    train: Optional[Iterator]
    valid: Optional[Iterator]
    test: Optional[Iterator]
    has_valid: bool
    has_test: bool


def _cycle(loader) -> Iterator:
    """Evaluation may ask for more batches than the split has: start over, as upstream."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def check_data_inputs(config: TrainingConfig) -> None:
    """Open the datasets and check the split before any process group exists (no collective)."""
    from megatron.data.gpt_dataset import check_dataset_inputs

    data = config.data
    check_dataset_inputs(
        data_prefix=list(data.data_path) if data.data_path else None, splits_string=data.split,
        train_valid_test_num_samples=train_valid_test_num_samples(config),
        train_data_prefix=list(data.train_data_path) if data.train_data_path else None,
        valid_data_prefix=list(data.valid_data_path) if data.valid_data_path else None,
        test_data_prefix=list(data.test_data_path) if data.test_data_path else None)


def build_data_iterators(config: TrainingConfig, state: TrainState) -> DataIterators:
    """Build the datasets on every rank (rank 0 writes the index cache), loaders on TP rank 0."""
    from megatron.data.data_samplers import build_pretraining_data_loader
    from megatron.data.gpt_dataset import build_train_valid_test_datasets

    data = config.data

    def prefixes(paths):
        return list(paths) if paths else None

    train_ds, valid_ds, test_ds = build_train_valid_test_datasets(
        data_prefix=prefixes(data.data_path), splits_string=data.split,
        train_valid_test_num_samples=train_valid_test_num_samples(config),
        seq_length=data.seq_length, seed=config.seed, data_cache_path=data.data_cache_path,
        train_data_prefix=prefixes(data.train_data_path),
        valid_data_prefix=prefixes(data.valid_data_path),
        test_data_prefix=prefixes(data.test_data_path))

    reads_data = parallel_state.get_tensor_model_parallel_rank() == 0

    def loader(dataset, consumed_samples):
        if dataset is None or not reads_data:
            return None
        return build_pretraining_data_loader(
            dataset, consumed_samples, micro_batch_size=config.batch.micro_batch_size,
            data_parallel_rank=parallel_state.get_data_parallel_rank(),
            data_parallel_size=parallel_state.get_data_parallel_world_size(),
            dataloader_type=data.dataloader_type, num_workers=data.num_workers, seed=config.seed)

    train_loader = loader(train_ds, state.consumed_train_samples)
    valid_loader = loader(valid_ds, state.consumed_valid_samples)
    test_loader = loader(test_ds, 0)
    return DataIterators(
        train=iter(train_loader) if train_loader is not None else None,
        valid=_cycle(valid_loader) if valid_loader is not None else None,
        test=_cycle(test_loader) if test_loader is not None else None,
        has_valid=valid_ds is not None, has_test=test_ds is not None)
