"""LayerNorm / RMSNorm (torch path) against float64 formulas."""
import torch

from megatron.model.fused_layer_norm import LayerNorm, RMSNorm


def test_layer_norm_matches_formula():
    torch.manual_seed(0)
    norm = LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 2, 16) * 4 + 1
    x64 = x.double()
    mean = x64.mean(-1, keepdim=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdim=True)
    expected = (x64 - mean) / torch.sqrt(var + 1e-5) * norm.weight.double() + norm.bias.double()
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in norm.named_parameters()] == ["weight", "bias"]


def test_rms_norm_matches_formula_and_has_only_weight():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 2, 16) * 3
    x64 = x.double()
    expected = x64 / torch.sqrt((x64 ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_sequence_parallel_marks_parameters():
    assert all(p.sequence_parallel for p in LayerNorm(4, sequence_parallel=True).parameters())
    assert not any(p.sequence_parallel for p in RMSNorm(4).parameters())


def test_bf16_input_keeps_dtype():
    norm = RMSNorm(8, params_dtype=torch.bfloat16)
    assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
