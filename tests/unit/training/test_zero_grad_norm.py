"""zero_grad_norm's gradient norm equals DeepSpeed's own `get_grad_norm_direct` bit for bit
(the fp32 result), over fp32 and bf16 gradients that cross the chunk edges, with
pipeline-replicated and tensor-parallel parameters, non-finite gradients, and over two
data-parallel ranks (gloo). DeepSpeed's method is the reference: it is the one the engine
would otherwise call."""
import functools
import types

import pytest
import torch

from tests.harness import run_on_ranks

SIZES = [1, 100, 65536, 65537, 3 * 65536 + 5, 400000]


def _optimizer(model_parallel_rank):
    import torch.distributed as dist
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    state = types.SimpleNamespace(device="cpu", model_parallel_rank=model_parallel_rank,
                                  dp_process_group=dist.group.WORLD, model_parallel_group=None)
    state._model_parallel_all_reduce = functools.partial(
        DeepSpeedZeroOptimizer._model_parallel_all_reduce, state)
    return state


def _gradients_and_params(seed, dtype, non_finite=False):
    generator = torch.Generator().manual_seed(seed)
    gradients, params = [], []
    for index, size in enumerate(SIZES):
        scale = 10.0 ** torch.randint(-6, 3, (), generator=generator).item()
        gradients.append((torch.randn(size, generator=generator) * scale).to(dtype))
        param = torch.empty(size)
        if index == 1:
            param.ds_pipe_replicated = True  # counted by another stage only
        if index in (2, 4):
            param.tensor_model_parallel = True  # a slice: counted on every TP rank
        params.append(param)
    if non_finite:
        gradients[4][7] = float("nan")  # a tensor-parallel slice: counted on every rank
    return gradients, params


def compare_with_deepspeed(seeds, model_parallel_rank, norm_type, dtype):
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from megatron.training import zero_grad_norm

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    optimizer = _optimizer(model_parallel_rank)
    pairs = []
    for seed in seeds:
        gradients, params = _gradients_and_params(seed * 10 + dist.get_rank(), dtype,
                                                  non_finite=seed == seeds[-1])
        expected = DeepSpeedZeroOptimizer.get_grad_norm_direct(optimizer, gradients, params,
                                                               norm_type)
        got = zero_grad_norm.grad_norm_direct(optimizer, gradients, params, norm_type)
        pairs.append((expected, got))
    return pairs


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("model_parallel_rank", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_norm_equals_deepspeed_bit_for_bit(world_size, model_parallel_rank, dtype):
    results = run_on_ranks(compare_with_deepspeed, list(range(12)), model_parallel_rank, 2, dtype,
                           world_size=world_size)
    for pairs in results:
        for expected, got in pairs[:-1]:
            assert got.dtype == expected.dtype == torch.float32
            assert got.item() > 0
            assert torch.equal(got, expected), (got.item(), expected.item())
        expected, got = pairs[-1]  # a NaN gradient: both report -1
        assert torch.equal(got, expected) and got.item() == -1.0
    assert len({pairs[0][1].item() for pairs in results}) == 1  # summed over the DP ranks


def test_other_norms_are_deepspeed_s():
    pairs = run_on_ranks(compare_with_deepspeed, [0, 1], 0, float("inf"), torch.float32,
                         world_size=1)[0]
    for expected, got in pairs:
        assert torch.equal(got, expected)


def test_fp64_sum_of_squares_over_chunks():
    from megatron.training.zero_grad_norm import fp64_sum_of_squares

    values = torch.randn(1000)
    exact = (values.double() ** 2).sum()
    for chunk in (1, 7, 1000, 4096):
        assert torch.allclose(fp64_sum_of_squares(values, chunk), exact, rtol=1e-14, atol=0)


def test_only_cpu_zero_optimizers_get_it():
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from megatron.training.zero_grad_norm import grad_norm_direct, use_chunked_grad_norm

    assert not use_chunked_grad_norm(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    zero = DeepSpeedZeroOptimizer.__new__(DeepSpeedZeroOptimizer)  # only its attributes matter
    zero.device = "cuda:0"
    assert not use_chunked_grad_norm(zero) and "get_grad_norm_direct" not in vars(zero)
    zero.device = "cpu"
    assert use_chunked_grad_norm(zero)
    assert zero.get_grad_norm_direct.__func__ is grad_norm_direct
