"""few_rows_linear.linear computes F.linear: the swapped product (weight @ input^T)^T where
the CPU kernels are faster for a generation step's few rows, F.linear itself everywhere else
(autograd, other row counts), so training is untouched.

Tolerances: fp32 against F.linear 1e-5 relative to the largest |output| (the two sum the same
products in another order); bf16 against an fp64 reference, no worse than 2x F.linear's own
error (both round the same fp32 accumulations to bf16)."""
import pytest
import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel import few_rows_linear


def _operands(rows, dtype, bias=True, in_features=96, out_features=200):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    b = torch.randn(out_features, generator=generator).to(dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8, 12, 15, 16, 40])
def test_fp32_equals_f_linear(rows, bias):
    x, weight, b = _operands(rows, torch.float32, bias)
    with torch.no_grad():
        expected = F.linear(x, weight, b)
        got = few_rows_linear.linear(x, weight, b)
    assert got.shape == expected.shape == (1, rows, 200)
    assert got.is_contiguous()
    error = (got - expected).abs().max()
    assert error <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("rows", [2, 8, 32])
def test_bf16_as_accurate_as_f_linear(rows):
    x, weight, b = _operands(rows, torch.bfloat16)
    reference = F.linear(x.double(), weight.double(), b.double())
    with torch.no_grad():
        assert few_rows_linear.uses_swapped_product(x, weight)
        got = few_rows_linear.linear(x, weight, b)
        plain = F.linear(x, weight, b)
    assert got.dtype == torch.bfloat16 and got.is_contiguous()
    own_error = (plain.double() - reference).abs().max()
    assert (got.double() - reference).abs().max() <= 2 * own_error + 1e-12


def test_which_calls_take_the_swap():
    x8, weight, _ = _operands(8, torch.float32)
    x1, _, _ = _operands(1, torch.float32)
    with torch.no_grad():
        assert few_rows_linear.uses_swapped_product(x8, weight)
        assert not few_rows_linear.uses_swapped_product(x1, weight)
        assert not few_rows_linear.uses_swapped_product(x8, weight.double())
    # outside no_grad only tensors that need no gradient take it
    assert few_rows_linear.uses_swapped_product(x8, weight)
    assert not few_rows_linear.uses_swapped_product(x8, weight.clone().requires_grad_())


def test_autograd_path_is_f_linear_bit_for_bit():
    x, weight, b = _operands(8, torch.float32)
    weight.requires_grad_()
    got = few_rows_linear.linear(x, weight, b)
    expected = F.linear(x, weight.detach().requires_grad_(), b)
    assert torch.equal(got, expected)
    got.sum().backward()
    rows_sum = x.reshape(8, -1).sum(0)
    assert weight.grad is not None and torch.equal(weight.grad, rows_sum.expand(200, -1))
