"""Column/Row parallel linear and the vocab-parallel embedding at TP=1, 2, 4 (and
sequence parallel at TP=2, 4) versus plain torch on the same full weights and data:
outputs, input gradients, weight and bias gradients, fp32 (tolerance in common.py)."""
import pytest
import torch
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


def _check_column(tp, gather_output, skip_bias_add, sequence_parallel, async_allreduce=False):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel,
                                 async_tensor_model_parallel_allreduce=async_allreduce)
    layer = ColumnParallelLinear(IN, OUT, config=config, init_method=_init,
                                 gather_output=gather_output, skip_bias_add=skip_bias_add,
                                 init_key="test.column")
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


def _check_row(tp, input_is_parallel, skip_bias_add, sequence_parallel):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel)
    layer = RowParallelLinear(IN, OUT, config=config, init_method=_init,
                              input_is_parallel=input_is_parallel, skip_bias_add=skip_bias_add,
                              init_key="test.row")
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


def _check_embedding(tp):
    rank = setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp)
    layer = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config,
                                   init_key="test.embedding")
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
                                         init_key="x")):
        try:
            build()
        except ValueError as error:
            errors.append(str(error))
    return errors


def test_bad_layer_arguments_raise_value_error():
    errors = run_on_ranks(_bad_layer_arguments, world_size=2)[0]
    assert len(errors) == 3
    assert "gather_output" in errors[0] and "input_is_parallel" in errors[1]
    assert "15 is not divisible by 2" in errors[2]
