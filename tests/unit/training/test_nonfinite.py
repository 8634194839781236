"""A non-finite gradient skips the step and leaves weights and optimizer state untouched."""
import torch

from megatron.training.nonfinite import NonFiniteStepGuard


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    return model, optimizer, NonFiniteStepGuard(optimizer)


def test_finite_step_is_applied():
    model, optimizer, guard = _setup()
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not guard.last_step_skipped
    assert not torch.equal(model.weight, before)


def test_nan_loss_skips_step():
    model, optimizer, guard = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.ones(2, 4)).sum() * float("nan")).backward()
    optimizer.step()
    assert guard.last_step_skipped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not optimizer.state  # no moment was updated
    # The next finite step goes through.
    optimizer.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not guard.last_step_skipped
    assert not torch.equal(model.weight, before[0])


def test_inf_in_one_gradient_skips_step():
    model, optimizer, guard = _setup()
    model(torch.ones(2, 4)).sum().backward()
    model.bias.grad[1] = float("inf")
    optimizer.step()
    assert guard.last_step_skipped
