"""The harness itself: results per rank, collectives, failures and hangs are reported."""
import time

import pytest
import torch
import torch.distributed as dist

from tests.harness import RankFailure, run_on_ranks


def _rank_and_sum(offset):
    rank = dist.get_rank()
    value = torch.tensor([float(rank + offset)])
    dist.all_reduce(value)
    return rank, dist.get_world_size(), value.item(), torch.get_num_threads()


def _fail_on_rank_one():
    if dist.get_rank() == 1:
        raise KeyError("deliberate failure")
    return dist.get_rank()


def _sleep(seconds):
    time.sleep(seconds)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_each_rank_runs_and_collectives_work(world_size):
    results = run_on_ranks(_rank_and_sum, 10, world_size=world_size)
    expected_sum = sum(rank + 10 for rank in range(world_size))
    assert results == [(rank, world_size, expected_sum, 1) for rank in range(world_size)]


def test_failure_carries_rank_traceback_and_pool_recovers():
    with pytest.raises(RankFailure, match=r"(?s)\[rank 1\].*deliberate failure"):
        run_on_ranks(_fail_on_rank_one, world_size=2)
    assert run_on_ranks(_rank_and_sum, 0, world_size=2)[0][2] == 1.0


def test_hang_fails_by_timeout():
    with pytest.raises(RankFailure, match="no answer within"):
        run_on_ranks(_sleep, 30, world_size=2, timeout=2)


def test_local_function_is_refused():
    def local():
        return 0

    with pytest.raises(ValueError, match="module-level"):
        run_on_ranks(local, world_size=2)
