"""The Python side of the fused softmax on CPU: dispatch, reshapes, autograd wiring, errors.

The CUDA extension is replaced by a fake with the same function names that computes the
formulas in plain torch and records its calls; tests/gpu checks the real kernels.
"""
import pytest
import torch

from megatron.fused_kernels import fused_scale_mask_softmax, loader

FILL = -10000.0


class FakeKernels:
    """Stands in for the extension: the documented formulas, in float64, plus a call log."""

    def __init__(self):
        self.calls = []

    def _log(self, name, *tensors):
        self.calls.append((name, [tuple(t.shape) for t in tensors]))

    @staticmethod
    def _backward(grad, probs, scale, zero_where=None):
        dot = (grad * probs).sum(-1, keepdim=True)
        result = scale * probs * (grad - dot)
        return result if zero_where is None else result.masked_fill(zero_where, 0.0)

    def scaled_softmax_forward(self, x, scale):
        self._log("scaled_softmax_forward", x)
        return torch.softmax(x * scale, -1)

    def scaled_softmax_backward(self, grad, probs, scale):
        self._log("scaled_softmax_backward", grad, probs)
        return self._backward(grad, probs, scale)

    def scaled_masked_softmax_forward(self, x, mask, scale):
        self._log("scaled_masked_softmax_forward", x, mask)
        return torch.softmax((x * scale).masked_fill(mask.bool(), FILL), -1)

    def scaled_masked_softmax_backward(self, grad, probs, mask, scale):
        self._log("scaled_masked_softmax_backward", grad, probs, mask)
        return self._backward(grad, probs, scale, mask.bool().expand_as(grad))

    def scaled_upper_triang_masked_softmax_forward(self, x, scale):
        self._log("scaled_upper_triang_masked_softmax_forward", x)
        above = torch.ones(x.shape[-2:], dtype=torch.bool).triu(1)
        return torch.softmax((x * scale).masked_fill(above, float("-inf")), -1)

    def scaled_upper_triang_masked_softmax_backward(self, grad, probs, scale):
        self._log("scaled_upper_triang_masked_softmax_backward", grad, probs)
        return self._backward(grad, probs, scale)


@pytest.fixture
def fake(monkeypatch):
    kernels = FakeKernels()
    monkeypatch.setattr(loader, "_STATE", loader._LoadState(attempted=True, module=kernels))
    return kernels


def _torch_path(scores, mask, scale, mask_type):
    """The reference the model's torch path computes."""
    x = scores * scale
    if mask_type == "causal":
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    if mask is not None:
        x = x.masked_fill(mask, FILL)
    return torch.softmax(x, -1)


def _check_against_reference(scores, mask, scale, mask_type):
    torch.manual_seed(1)
    fused_in = scores.clone().requires_grad_(True)
    ref_in = scores.clone().requires_grad_(True)
    probs = fused_scale_mask_softmax(fused_in, mask, scale, mask_type)
    expected = _torch_path(ref_in, mask, scale, mask_type)
    grad = torch.randn_like(expected)
    probs.backward(grad)
    expected.backward(grad)
    assert probs.shape == scores.shape
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fused_in.grad, ref_in.grad, atol=1e-12, rtol=1e-10)


def test_causal_uses_the_triangular_kernel_on_3d_views(fake):
    scores = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    _check_against_reference(scores, None, 0.5, "causal")
    assert fake.calls == [("scaled_upper_triang_masked_softmax_forward", [(6, 5, 5)]),
                          ("scaled_upper_triang_masked_softmax_backward", [(6, 5, 5), (6, 5, 5)])]


def test_causal_ignores_a_given_mask(fake):
    scores = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    unrelated = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    probs = fused_scale_mask_softmax(scores, unrelated, 1.0, "causal")
    torch.testing.assert_close(probs, _torch_path(scores, None, 1.0, "causal"))


def test_padding_passes_the_mask_forward_and_backward(fake):
    scores = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    mask = torch.rand(2, 1, 4, 6) > 0.6
    mask[0, 0, 1] = True  # one fully masked row
    _check_against_reference(scores, mask, 0.125, "padding")
    names = [name for name, _ in fake.calls]
    assert names == ["scaled_masked_softmax_forward", "scaled_masked_softmax_backward"]
    assert fake.calls[1][1][2] == (2, 1, 4, 6)  # backward gets the caller's mask as given


def test_padding_without_mask_is_scaled_softmax(fake):
    scores = torch.randn(1, 2, 3, 7, dtype=torch.float64)
    _check_against_reference(scores, None, 2.0, "padding")
    assert [name for name, _ in fake.calls] == ["scaled_softmax_forward",
                                                "scaled_softmax_backward"]


def test_none_and_default_scale(fake):
    scores = torch.randn(1, 1, 2, 9, dtype=torch.float64)
    probs = fused_scale_mask_softmax(scores, None, None, "none")
    torch.testing.assert_close(probs, torch.softmax(scores, -1))


def test_non_contiguous_scores_reach_the_kernel_contiguous(fake):
    base = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    scores = base.transpose(0, 1)  # [4, 2, 3, 8], not contiguous
    _check_against_reference(scores, None, 1.0, "none")


@pytest.mark.parametrize("mask_type, mask, shape, message", [
    ("none", torch.zeros(1, 1, 4, 4, dtype=torch.bool), (1, 1, 4, 4), "takes no mask"),
    ("causal", None, (1, 1, 3, 4), "square"),
    ("padding", None, (4, 4), r"\[batch, heads, seq_q, seq_k\]"),
    ("upper", None, (1, 1, 4, 4), "mask_type"),
])
def test_bad_calls_are_value_errors(fake, mask_type, mask, shape, message):
    with pytest.raises(ValueError, match=message):
        fused_scale_mask_softmax(torch.randn(shape), mask, 1.0, mask_type)
    assert fake.calls == []


def test_unavailable_kernels_raise_a_clear_error(monkeypatch):
    monkeypatch.setattr(loader, "_STATE", loader._LoadState(attempted=True, module=None))
    with pytest.raises(RuntimeError, match="fused_kernels_available"):
        fused_scale_mask_softmax(torch.randn(1, 1, 2, 2), None, 1.0, "none")
