"""Column/Row parallel linear and the vocab-parallel embedding at TP=1, 2, 4 (and
sequence parallel at TP=2, 4) versus plain torch on the same full weights and data:
outputs, input gradients, weight and bias gradients, fp32 (tolerance in common.py).
Built both keyed (`init_key`) and as upstream code calls them (no `init_key`), with the
global tensor-parallel group and with an explicit `tp_group`."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    allreduce_sequence_parallel_gradients,
)
from tests.dist.core.common import assert_close, chunk, randn, setup
from tests.harness import run_on_ranks

S, B, IN, OUT, VOCAB = 8, 2, 12, 16, 32


def _init(tensor):
    torch.nn.init.normal_(tensor, std=0.02)


def _reference_linear(x, weight, bias, grad_out):
    x = x.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    bias = bias.clone().requires_grad_()
    out = F.linear(x, weight, bias)
    out.backward(grad_out)
    return out.detach(), x.grad, weight.grad, bias.grad


def _check_column(tp, gather_output, skip_bias_add, sequence_parallel, async_allreduce=False,
                  init_key="test.column"):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel,
                                 async_tensor_model_parallel_allreduce=async_allreduce)
    layer = ColumnParallelLinear(IN, OUT, config=config, init_method=_init,
                                 gather_output=gather_output, skip_bias_add=skip_bias_add,
                                 init_key=init_key)
    weight, bias = randn(OUT, IN, seed=1), randn(OUT, seed=2)
    x, grad_out = randn(S, B, IN, seed=3), randn(S, B, OUT, seed=4)
    with torch.no_grad():
        layer.weight.copy_(chunk(weight, 0, rank, tp))
        layer.bias.copy_(chunk(bias, 0, rank, tp))
    ref_out, ref_dx, ref_dw, ref_db = _reference_linear(x, weight, bias, grad_out)

    local_x = chunk(x, 0, rank, tp) if sequence_parallel else x
    local_x = local_x.clone().requires_grad_()
    out, out_bias = layer(local_x)
    if skip_bias_add:
        assert out_bias is layer.bias
        out = out + (bias if gather_output else out_bias)  # add it back as the caller would
    else:
        assert out_bias is None
    if gather_output:
        assert_close(out.detach(), ref_out, "column output")
        out.backward(grad_out)
    else:
        assert_close(out.detach(), chunk(ref_out, 2, rank, tp), "column output")
        out.backward(chunk(grad_out, 2, rank, tp))
    expected_dx = chunk(ref_dx, 0, rank, tp) if sequence_parallel else ref_dx
    assert_close(local_x.grad, expected_dx, "column input grad")
    assert_close(layer.weight.grad, chunk(ref_dw, 0, rank, tp), "column weight grad")
    if not (skip_bias_add and gather_output):
        assert_close(layer.bias.grad, chunk(ref_db, 0, rank, tp), "column bias grad")
    assert layer.weight.tensor_model_parallel and layer.weight.partition_dim == 0
    return rank


def _check_row(tp, input_is_parallel, skip_bias_add, sequence_parallel, init_key="test.row"):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel)
    layer = RowParallelLinear(IN, OUT, config=config, init_method=_init,
                              input_is_parallel=input_is_parallel, skip_bias_add=skip_bias_add,
                              init_key=init_key)
    weight, bias = randn(OUT, IN, seed=11), randn(OUT, seed=12)
    x, grad_out = randn(S, B, IN, seed=13), randn(S, B, OUT, seed=14)
    with torch.no_grad():
        layer.weight.copy_(chunk(weight, 1, rank, tp))
        layer.bias.copy_(bias)
    ref_out, ref_dx, ref_dw, ref_db = _reference_linear(x, weight, bias, grad_out)

    local_x = (chunk(x, 2, rank, tp) if input_is_parallel else x).clone().requires_grad_()
    out, out_bias = layer(local_x)
    if skip_bias_add:
        assert out_bias is layer.bias
        out = out + out_bias
    else:
        assert out_bias is None
    if sequence_parallel:
        assert_close(out.detach(), chunk(ref_out, 0, rank, tp), "row output")
        out.backward(chunk(grad_out, 0, rank, tp))
        allreduce_sequence_parallel_gradients(layer.parameters())
    else:
        assert_close(out.detach(), ref_out, "row output")
        out.backward(grad_out)
    expected_dx = chunk(ref_dx, 2, rank, tp) if input_is_parallel else ref_dx
    assert_close(local_x.grad, expected_dx, "row input grad")
    assert_close(layer.weight.grad, chunk(ref_dw, 1, rank, tp), "row weight grad")
    assert_close(layer.bias.grad, ref_db, "row bias grad")
    assert layer.weight.partition_dim == 1 and not layer.bias.tensor_model_parallel
    return rank


def _check_embedding(tp, init_key="test.embedding"):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp)
    layer = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config,
                                   init_key=init_key)
    table = randn(VOCAB, IN, seed=21)
    ids = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(22))
    ids[0, :4] = torch.tensor([0, VOCAB - 1, VOCAB // 2, VOCAB // 2 - 1])  # partition edges
    grad_out = randn(B, S, IN, seed=23)
    with torch.no_grad():
        layer.weight.copy_(chunk(table, 0, rank, tp))
    ref_table = table.clone().requires_grad_()
    ref_out = F.embedding(ids, ref_table)
    ref_out.backward(grad_out)

    out = layer(ids)
    assert_close(out.detach(), ref_out.detach(), "embedding output")
    out.backward(grad_out)
    assert_close(layer.weight.grad, chunk(ref_table.grad, 0, rank, tp), "embedding weight grad")
    return rank


COLUMN_CASES = [(g, s) for g in (False, True) for s in (False, True)]


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("gather_output,skip_bias_add", COLUMN_CASES)
def test_column_parallel_linear(tp, gather_output, skip_bias_add):
    results = run_on_ranks(_check_column, tp, gather_output, skip_bias_add, False, world_size=tp)
    assert results == list(range(tp))


@pytest.mark.parametrize("tp", [2, 4])
def test_column_parallel_linear_async_allreduce(tp):
    results = run_on_ranks(_check_column, tp, False, False, False, True, world_size=tp)
    assert results == list(range(tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("input_is_parallel,skip_bias_add", COLUMN_CASES)
def test_row_parallel_linear(tp, input_is_parallel, skip_bias_add):
    results = run_on_ranks(_check_row, tp, input_is_parallel, skip_bias_add, False, world_size=tp)
    assert results == list(range(tp))


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("skip_bias_add", [False, True])
def test_sequence_parallel_linears(tp, skip_bias_add):
    assert run_on_ranks(_check_column, tp, False, skip_bias_add, True, world_size=tp) == list(range(tp))
    assert run_on_ranks(_check_row, tp, True, skip_bias_add, True, world_size=tp) == list(range(tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_parallel_embedding(tp):
    assert run_on_ranks(_check_embedding, tp, world_size=tp) == list(range(tp))


def _upstream_style_calls(tp):
    """The constructor calls of upstream code: keyword-only, no init_key, no tp_group."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    setup(tp)
    model_parallel_cuda_manual_seed(3)  # upstream's device initialization draws from it
    config = ModelParallelConfig(tensor_model_parallel_size=tp)
    column = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, bias=True,
                                  gather_output=False, stride=1,
                                  keep_master_weight_for_test=False, skip_bias_add=False,
                                  skip_weight_param_allocation=False)
    row = RowParallelLinear(OUT, IN, config=config, init_method=_init, bias=True,
                            input_is_parallel=True, skip_bias_add=True, stride=1,
                            keep_master_weight_for_test=False)
    embedding = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config)
    return [tuple(layer.weight.shape) for layer in (column, row, embedding)]


@pytest.mark.parametrize("tp", [1, 2])
def test_upstream_style_calls(tp):
    """Upstream's signatures build and compute exactly like the keyed layers."""
    shapes = run_on_ranks(_upstream_style_calls, tp, world_size=tp)[0]
    assert shapes == [(OUT // tp, IN), (IN, OUT // tp), (VOCAB // tp, IN)]
    for gather_output, skip_bias_add in COLUMN_CASES:
        assert run_on_ranks(_check_column, tp, gather_output, skip_bias_add, False, init_key=None,
                            world_size=tp) == list(range(tp))
        assert run_on_ranks(_check_row, tp, gather_output, skip_bias_add, False, init_key=None,
                            world_size=tp) == list(range(tp))
    assert run_on_ranks(_check_embedding, tp, init_key=None, world_size=tp) == list(range(tp))


def _explicit_tp_group():
    """Global groups at TP=1 (two data-parallel ranks); the layers get a 2-rank tp_group."""
    setup(1)
    group = dist.new_group([0, 1])
    rank = dist.get_rank(group)
    config = ModelParallelConfig(tensor_model_parallel_size=2)
    column = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, gather_output=True,
                                  tp_group=group)
    row = RowParallelLinear(OUT, IN, config=config, init_method=_init, input_is_parallel=True,
                            tp_group=group)
    embedding = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config, tp_group=group)
    w1, b1 = randn(OUT, IN, seed=31), randn(OUT, seed=32)
    w2, b2 = randn(IN, OUT, seed=33), randn(IN, seed=34)
    table = randn(VOCAB, IN, seed=35)
    with torch.no_grad():
        column.weight.copy_(chunk(w1, 0, rank, 2))
        column.bias.copy_(chunk(b1, 0, rank, 2))
        row.weight.copy_(chunk(w2, 1, rank, 2))
        row.bias.copy_(b2)
        embedding.weight.copy_(chunk(table, 0, rank, 2))
    x = randn(S, B, IN, seed=36)
    hidden, _ = column(x)
    assert_close(hidden, F.linear(x, w1, b1), "column output over tp_group")
    out, _ = row(chunk(hidden, 2, rank, 2))
    assert_close(out, F.linear(F.linear(x, w1, b1), w2, b2), "row output over tp_group")
    ids = torch.arange(VOCAB).reshape(2, VOCAB // 2)
    assert_close(embedding(ids), F.embedding(ids, table), "embedding output over tp_group")
    lonely = dist.new_group([0])  # every rank must create it; only rank 0 is a member
    if dist.get_rank() == 1:
        try:
            ColumnParallelLinear(IN, OUT, config=config, init_method=_init, tp_group=lonely)
        except ValueError as error:
            return str(error)
    return column.output_size_per_partition


def test_explicit_tp_group_overrides_the_global_one():
    results = run_on_ranks(_explicit_tp_group, world_size=2)
    assert results[0] == OUT // 2
    assert "not a member" in results[1] and "tp_group" in results[1]


def _weight_supplied_in_forward():
    setup(1)
    config = ModelParallelConfig()
    layer = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, bias=False,
                                 skip_weight_param_allocation=True)
    assert layer.weight is None and not list(layer.parameters())
    weight, x = randn(OUT, IN, seed=41), randn(S, B, IN, seed=42)
    out, _ = layer(x, weight)
    assert_close(out, F.linear(x, weight), "output with a supplied weight")
    errors = []
    for call in (lambda: layer(x), lambda: layer(x, weight.t())):
        try:
            call()
        except ValueError as error:
            errors.append(str(error))
    return errors


def test_skip_weight_param_allocation_needs_a_weight_in_forward():
    errors = run_on_ranks(_weight_supplied_in_forward, world_size=1)[0]
    assert "skip_weight_param_allocation" in errors[0] and "(12, 16)" in errors[1]


def _bad_layer_arguments():
    setup(2)
    sp_config = ModelParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    errors = []
    for build in (
            lambda: ColumnParallelLinear(IN, OUT, config=sp_config, init_method=_init,
                                         gather_output=True, init_key="x"),
            lambda: RowParallelLinear(IN, OUT, config=sp_config, init_method=_init,
                                      input_is_parallel=False, init_key="x"),
            lambda: ColumnParallelLinear(IN, 15, config=ModelParallelConfig(), init_method=_init,
                                         init_key="x"),
            lambda: RowParallelLinear(IN, OUT, config=ModelParallelConfig(), init_method=_init,
                                      moe=True)):
        try:
            build()
        except ValueError as error:
            errors.append(str(error))
    return errors


def test_bad_layer_arguments_raise_value_error():
    errors = run_on_ranks(_bad_layer_arguments, world_size=2)[0]
    assert len(errors) == 4
    assert "gather_output" in errors[0] and "input_is_parallel" in errors[1]
    assert "15 is not divisible by 2" in errors[2]
    assert "moe=True" in errors[3]
