"""Pretraining samplers: resume exactness, rank partitioning, loader RNG isolation."""
import numpy as np
import pytest
import torch

from megatron.data.data_samplers import (MegatronPretrainingRandomSampler,
                                         MegatronPretrainingSampler,
                                         build_pretraining_data_loader)


class Indexed(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        return {"text": np.array([idx, idx + 1], dtype=np.int64)}


def global_batches(make, data_parallel_size):
    """Per-step lists of the samples every rank sees, concatenated in rank order."""
    per_rank = [list(make(rank)) for rank in range(data_parallel_size)]
    return [sum(step, []) for step in zip(*per_rank)]


@pytest.mark.parametrize("dp,mbs", [(1, 4), (2, 3), (4, 1)])
def test_single_sampler_resume_is_exact(dp, mbs):
    total = 103
    full = global_batches(lambda r: MegatronPretrainingSampler(total, 0, mbs, r, dp), dp)
    flat = sum(full, [])
    # Uninterrupted: every sample once, in order, drop_last of the partial global batch.
    assert flat == list(range(len(flat))) and total - len(flat) < mbs * dp
    for steps in (1, 5, len(full) - 1):
        k = steps * mbs * dp
        resumed = global_batches(lambda r: MegatronPretrainingSampler(total, k, mbs, r, dp), dp)
        assert resumed == full[steps:]


def test_single_sampler_bad_inputs():
    with pytest.raises(ValueError, match="consumed_samples"):
        MegatronPretrainingSampler(10, 10, 2, 0, 1)
    with pytest.raises(ValueError, match="data-parallel rank"):
        MegatronPretrainingSampler(10, 0, 2, 2, 2)
    with pytest.raises(ValueError, match="micro-batch-size"):
        MegatronPretrainingSampler(10, 0, 0, 0, 1)


@pytest.mark.parametrize("sharding", [True, False])
def test_random_sampler_resume_and_coverage(sharding):
    total, mbs, dp = 50, 2, 2

    def make(rank, consumed=0):
        return MegatronPretrainingRandomSampler(total, consumed, mbs, rank, dp,
                                                data_sharding=sharding, seed=11)

    full = global_batches(make, dp)
    flat = sum(full, [])
    assert len(flat) == len(set(flat)) == 48 and max(flat) < total
    for steps in (1, 7):
        resumed = global_batches(lambda r: make(r, steps * mbs * dp), dp)
        assert resumed == full[steps:]
    next_epoch = global_batches(lambda r: make(r, 48), dp)
    # A new epoch is a new permutation (without sharding the 2 samples each epoch leaves
    # out differ, as upstream's sampler does).
    next_flat = sum(next_epoch, [])
    assert len(set(next_flat)) == 48 and next_epoch != full


def test_loader_resumes_and_leaves_global_rng_alone():
    dataset = Indexed(40)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = build_pretraining_data_loader(dataset, 8, micro_batch_size=2, data_parallel_rank=1,
                                           data_parallel_size=2)
    batches = [b["text"][:, 0].tolist() for b in loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert batches[0] == [10, 11] and batches[-1] == [38, 39] and len(batches) == 8
    assert build_pretraining_data_loader(None, 0, micro_batch_size=1, data_parallel_rank=0,
                                         data_parallel_size=1) is None
    with pytest.raises(ValueError, match="dataloader-type"):
        build_pretraining_data_loader(dataset, 0, micro_batch_size=1, data_parallel_rank=0,
                                      data_parallel_size=1, dataloader_type="external")


def test_loader_with_workers_matches_in_process():
    dataset = Indexed(24)
    kwargs = dict(micro_batch_size=3, data_parallel_rank=0, data_parallel_size=1)
    plain = [b["text"] for b in build_pretraining_data_loader(dataset, 6, **kwargs)]
    workers = [b["text"] for b in build_pretraining_data_loader(dataset, 6, num_workers=2,
                                                                  **kwargs)]
    assert len(plain) == len(workers) == 6
    for a, b in zip(plain, workers):
        assert torch.equal(a, b)
