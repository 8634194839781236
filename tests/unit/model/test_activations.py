"""Activations against their closed-form definitions in float64."""
import math

import pytest
import torch

from megatron.model.activations import bias_gelu, get_activation, gelu, openai_gelu, swiglu


def test_gelu_is_exact_erf_gelu():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(gelu(x), expected)


def test_openai_gelu_is_tanh_formula_and_differs_from_exact():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(openai_gelu(x), expected)
    assert (openai_gelu(x) - gelu(x)).abs().max() > 1e-4


def test_swiglu_gate_then_up():
    g = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    u = torch.tensor([[3.0, 5.0]], dtype=torch.float64)
    expected = g * torch.sigmoid(g) * u
    torch.testing.assert_close(swiglu(torch.cat([g, u], dim=-1)), expected)


def test_bias_gelu_uses_exact_gelu():
    x = torch.randn(4, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    y = x + b
    torch.testing.assert_close(bias_gelu(x, b), 0.5 * y * (1 + torch.erf(y / math.sqrt(2))))
    torch.testing.assert_close(bias_gelu(x, None), gelu(x))


def test_get_activation():
    assert get_activation("gelu") is gelu
    assert get_activation("gelu", openai=True) is openai_gelu
    assert get_activation("swiglu") is swiglu
    with pytest.raises(ValueError, match="relu"):
        get_activation("relu")
