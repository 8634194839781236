"""--log-params-norm and --log-num-zeros-in-grad: what each rank counts, without processes
(the reductions over ranks are checked by tests/functional/test_params_norm_and_zeros.py)."""
from types import SimpleNamespace

import torch

from megatron.training.model_stats import (GradZeroCounter, local_grad_zero_counts,
                                           local_params_square_sum)


def _param(values, *, split=False, pipe_replicated=None, grad=None):
    param = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    param.tensor_model_parallel = split
    if pipe_replicated is not None:
        param.ds_pipe_replicated = pipe_replicated
    if grad is not None:
        param.grad = torch.tensor(grad, dtype=torch.float32)
    return param


def test_params_square_sum_counts_replicated_parameters_on_tensor_rank_0_only():
    split = _param([3.0, 4.0], split=True)
    replicated = _param([1.0, 2.0])
    tied_copy = _param([10.0], split=True, pipe_replicated=True)  # a later stage's tied embedding
    owner = _param([5.0], split=True, pipe_replicated=False)
    params = [split, replicated, tied_copy, owner]
    assert float(local_params_square_sum(params, tensor_parallel_rank=0)) == 25 + 5 + 25
    assert float(local_params_square_sum(params, tensor_parallel_rank=1)) == 25 + 25


def test_zero_counts_of_full_gradients_follow_the_same_rules():
    params = [_param([1.0, 1.0, 1.0], split=True, grad=[0.0, 2.0, 0.0]),
              _param([1.0, 1.0], grad=[0.0, 0.0]),
              _param([1.0], split=True, pipe_replicated=True, grad=[0.0]),
              _param([1.0, 1.0])]  # no gradient: not counted
    assert local_grad_zero_counts(params, tensor_parallel_rank=0) == (0, 4)
    assert local_grad_zero_counts(params, tensor_parallel_rank=1) == (0, 2)


def _zero_partitioned(values, grad_fragment, *, start, numel, index=0):
    """A parameter as DeepSpeed's ZeRO-1/2 and bf16 optimizers leave it: no `.grad`, its
    gradient in the optimizer's per-partition lists, reached through `_hp_mapping`."""
    param = _param(values, split=True)
    fragments = {index: torch.tensor(grad_fragment, dtype=torch.float32)}
    param._hp_mapping = SimpleNamespace(
        lp_fragment_address=SimpleNamespace(start=start, numel=numel),
        get_lp_grad_fragment=lambda i: fragments[i])
    param._index_in_param_group = index
    return param


def test_zero_counts_of_partitioned_gradients_count_this_ranks_fragment():
    owned = _zero_partitioned([1.0] * 4, [0.0, 5.0], start=2, numel=2)  # elements 2..3 are here
    elsewhere = _param([1.0, 1.0], split=True)
    elsewhere._hp_mapping = None  # another data-parallel rank owns all of it
    # The bf16 optimizer keeps the whole gradient on every rank: only the owned slice counts.
    whole = _zero_partitioned([1.0] * 4, [0.0, 0.0, 0.0, 7.0], start=2, numel=2)
    assert local_grad_zero_counts([owned, elsewhere, whole], tensor_parallel_rank=0) == (2, 0)


def test_counter_counts_before_the_step_and_keeps_the_step():
    model = torch.nn.Linear(3, 2, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    counter = GradZeroCounter(optimizer, model)
    assert counter.last_count is None
    model(torch.tensor([[1.0, 0.0, 2.0]])).sum().backward()  # the middle column gets no gradient
    before = model.weight.detach().clone()
    optimizer.step()
    assert counter.last_count == 2
    assert not torch.equal(model.weight, before)
    assert torch.equal(model.weight[:, 1], before[:, 1])
