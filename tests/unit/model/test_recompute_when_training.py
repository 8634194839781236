"""recompute.checkpoint_when_training, the one recompute switch of GPTModel's layer chunks,
GPTModelPipe's block layers and selective attention: it recomputes only while the module
trains with autograd on, and gives the plain result and gradients either way."""
import pytest
import torch

from megatron.model import recompute
from megatron.model.transformer_config import TransformerConfig

CONFIG = TransformerConfig(num_layers=2, hidden_size=8, num_attention_heads=2,
                           max_position_embeddings=4, padded_vocab_size=16)


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.calls = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.linear(x))


@pytest.mark.parametrize("training,grad_enabled,calls", [
    (True, True, 2),    # forward, then the recompute in backward
    (False, True, 1),   # evaluation: nothing to recompute
    (True, False, 1),   # no autograd: nothing is saved
])
def test_recomputes_only_while_training_with_autograd(training, grad_enabled, calls):
    torch.manual_seed(0)
    module = _Counting().train(training)
    x = torch.randn(3, 8, requires_grad=True)
    expected = module.run(x)
    module.calls = 0
    with torch.set_grad_enabled(grad_enabled):
        out = recompute.checkpoint_when_training(CONFIG, module, module.run, x)
        if grad_enabled:
            out.sum().backward()
    assert torch.equal(out, expected)
    assert module.calls == calls
    if grad_enabled:
        reference = x.detach().clone().requires_grad_()
        torch.tanh(module.linear(reference)).sum().backward()
        assert torch.equal(x.grad, reference.grad)
