"""Every tensor-parallel mapping at TP=1, 2, 4: forward values and gradients versus what
the composed single-process function gives (inputs and upstream gradients are known on
every rank, so each rank computes the reference by hand)."""
import pytest
import torch

from megatron.core.tensor_parallel import mappings
from tests.dist.core.common import assert_close, chunk, randn, setup
from tests.harness import run_on_ranks

S, B, H = 8, 2, 8  # [sequence, batch, hidden]; divisible by every TP size tested


def _check_mappings(tp):
    rank = setup(tp)
    per_rank = [randn(S, B, H, seed=100 + r) for r in range(tp)]
    grads = [randn(S, B, H, seed=200 + r) for r in range(tp)]
    shared = randn(S, B, H, seed=1)

    # copy: identity forward; the gradient is the sum of every rank's gradient.
    x = shared.clone().requires_grad_()
    y = mappings.copy_to_tensor_model_parallel_region(x)
    assert_close(y, shared, "copy forward")
    y.backward(grads[rank])
    assert_close(x.grad, sum(grads), "copy backward")

    # reduce: sum forward; identity backward.
    x = per_rank[rank].clone().requires_grad_()
    y = mappings.reduce_from_tensor_model_parallel_region(x)
    assert_close(y, sum(per_rank), "reduce forward")
    y.backward(grads[0])
    assert_close(x.grad, grads[0], "reduce backward")

    # scatter along the last dim: own block forward; gradient blocks are gathered.
    x = shared.clone().requires_grad_()
    y = mappings.scatter_to_tensor_model_parallel_region(x)
    assert_close(y, chunk(shared, 2, rank, tp), "scatter forward")
    y.backward(chunk(grads[rank], 2, rank, tp))
    expected = torch.cat([chunk(grads[r], 2, r, tp) for r in range(tp)], dim=2)
    assert_close(x.grad, expected, "scatter backward")

    # gather along the last dim: concatenation forward; own block of the gradient.
    local = [chunk(per_rank[r], 2, r, tp) for r in range(tp)]
    x = local[rank].clone().requires_grad_()
    y = mappings.gather_from_tensor_model_parallel_region(x)
    assert_close(y, torch.cat(local, dim=2), "gather forward")
    y.backward(grads[0])
    assert_close(x.grad, chunk(grads[0], 2, rank, tp), "gather backward")
    return rank


def _check_sequence_mappings(tp):
    rank = setup(tp)
    per_rank = [randn(S, B, H, seed=300 + r) for r in range(tp)]
    grads = [randn(S, B, H, seed=400 + r) for r in range(tp)]
    shared = randn(S, B, H, seed=2)

    # scatter along the sequence: own chunk; gradient chunks gathered.
    x = shared.clone().requires_grad_()
    y = mappings.scatter_to_sequence_parallel_region(x)
    assert_close(y, chunk(shared, 0, rank, tp), "sp scatter forward")
    y.backward(chunk(grads[rank], 0, rank, tp))
    expected = torch.cat([chunk(grads[r], 0, r, tp) for r in range(tp)], dim=0)
    assert_close(x.grad, expected, "sp scatter backward")

    local = [chunk(per_rank[r], 0, r, tp) for r in range(tp)]
    gathered = torch.cat(local, dim=0)
    # gather along the sequence, consumer tensor-parallel: gradients are summed, then split.
    x = local[rank].clone().requires_grad_()
    y = mappings.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=True)
    assert_close(y, gathered, "sp gather forward")
    y.backward(grads[rank])
    assert_close(x.grad, chunk(sum(grads), 0, rank, tp), "sp gather backward (tp grad)")
    # consumer replicated: each rank's gradient is already complete, only split.
    x = local[rank].clone().requires_grad_()
    y = mappings.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
    y.backward(grads[rank])
    assert_close(x.grad, chunk(grads[rank], 0, rank, tp), "sp gather backward (no tp grad)")

    # reduce-scatter: own chunk of the sum; gradient chunks gathered.
    x = per_rank[rank].clone().requires_grad_()
    y = mappings.reduce_scatter_to_sequence_parallel_region(x)
    assert_close(y, chunk(sum(per_rank), 0, rank, tp), "reduce-scatter forward")
    y.backward(chunk(grads[rank], 0, rank, tp))
    expected = torch.cat([chunk(grads[r], 0, r, tp) for r in range(tp)], dim=0)
    assert_close(x.grad, expected, "reduce-scatter backward")
    return rank


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tensor_parallel_mappings(tp):
    assert run_on_ranks(_check_mappings, tp, world_size=tp) == list(range(tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_sequence_parallel_mappings(tp):
    assert run_on_ranks(_check_sequence_mappings, tp, world_size=tp) == list(range(tp))


def test_mappings_use_the_tensor_parallel_group_only():
    # 4 ranks as TP=2 x DP=2: sums must stay inside each TP pair.
    results = run_on_ranks(_check_mappings, 2, world_size=4)
    assert results == [0, 1, 0, 1]
