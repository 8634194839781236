"""Model-parallel RNG streams and activation checkpointing with dropout (TP=2, 4)."""
import pytest
import torch
import torch.nn.functional as F

from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    checkpoint,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
)
from megatron.core.tensor_parallel.random import _MODEL_PARALLEL_RNG_TRACKER_NAME
from tests.dist.core.common import assert_close, randn, setup
from tests.harness import run_on_ranks

H, FFN, S, B = 8, 16, 4, 2


def _dropout_masks(tp):
    setup(tp)
    model_parallel_cuda_manual_seed(1234)
    ones = torch.ones(64)
    default_mask = F.dropout(ones, p=0.5) != 0
    with get_cuda_rng_tracker().fork():
        tracked_mask = F.dropout(ones, p=0.5) != 0
    default_after_fork = F.dropout(ones, p=0.5) != 0
    # The fork must not advance the default stream: replay it without the fork.
    torch.manual_seed(1234)
    F.dropout(ones, p=0.5)
    default_without_fork = F.dropout(ones, p=0.5) != 0
    get_cuda_rng_tracker().reset()
    return default_mask, tracked_mask, default_after_fork, default_without_fork


@pytest.mark.parametrize("tp,world_size", [(2, 2), (4, 4), (2, 4)])
def test_dropout_masks_equal_outside_and_different_inside_tensor_parallel_region(tp, world_size):
    results = run_on_ranks(_dropout_masks, tp, world_size=world_size)
    defaults = [r[0] for r in results]
    tracked = [r[1] for r in results]
    assert all(torch.equal(mask, defaults[0]) for mask in defaults)  # same on every rank
    for group_start in range(0, world_size, tp):
        group = tracked[group_start:group_start + tp]
        for i in range(tp):
            for j in range(i + 1, tp):
                assert not torch.equal(group[i], group[j]), "TP ranks drew the same mask"
    if world_size > tp:  # same TP rank in different data-parallel replicas: same stream
        assert torch.equal(tracked[0], tracked[tp])
    for _, _, after_fork, without_fork in results:
        assert torch.equal(after_fork, without_fork)


def _block(x, column, row):
    """A small MLP with dropout in both streams (like attention/MLP dropout)."""
    hidden, _ = column(x)
    with get_cuda_rng_tracker().fork():
        hidden = F.dropout(F.gelu(hidden), p=0.3, training=True)
    out, _ = row(hidden)
    return F.dropout(out, p=0.3, training=True)


def _run_block(tp, use_checkpoint, distribute_saved_activations):
    setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True)

    def init(t):
        torch.nn.init.normal_(t, std=0.2)

    column = ColumnParallelLinear(H, FFN, config=config, init_method=init, init_key="ckpt.fc1")
    row = RowParallelLinear(FFN, H, config=config, init_method=init, input_is_parallel=True,
                            init_key="ckpt.fc2")
    x = randn(S, B, H, seed=5).requires_grad_()
    model_parallel_cuda_manual_seed(99)
    if use_checkpoint:
        out = checkpoint(lambda inp: _block(inp, column, row), distribute_saved_activations, x)
        # Other work between forward and backward moves both RNG streams on.
        torch.rand(10)
        with get_cuda_rng_tracker().fork():
            torch.rand(10)
    else:
        out = _block(x, column, row)
    (out * randn(S, B, H, seed=6)).sum().backward()
    states_after = get_cuda_rng_tracker().get_states()[_MODEL_PARALLEL_RNG_TRACKER_NAME]
    get_cuda_rng_tracker().reset()
    return (out.detach(), x.grad, column.weight.grad, row.weight.grad, column.bias.grad,
            states_after)


def _compare_checkpoint(tp, distribute_saved_activations):
    plain = _run_block(tp, False, False)
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    checkpointed = _run_block(tp, True, distribute_saved_activations)
    names = ["output", "input grad", "fc1 weight grad", "fc2 weight grad", "fc1 bias grad"]
    for name, a, b in zip(names, plain[:5], checkpointed[:5]):
        assert_close(b, a, f"checkpointed {name}")
    assert (plain[0] == 0).any(), "dropout did not drop anything"
    return True


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_checkpoint_recompute_matches_no_checkpoint_with_dropout(tp):
    assert all(run_on_ranks(_compare_checkpoint, tp, False, world_size=tp))


@pytest.mark.parametrize("tp", [2, 4])
def test_checkpoint_with_distributed_saved_activations(tp):
    assert all(run_on_ranks(_compare_checkpoint, tp, True, world_size=tp))
