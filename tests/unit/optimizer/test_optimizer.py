"""Parameter groups and the optimizer: decoupled weight decay checked against a hand computation."""
import pytest
import torch

from megatron.config.schema import OptimizerConfig
from megatron.training.optimizer import build_optimizer, get_param_groups


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(5, 3)
        self.dense = torch.nn.Linear(3, 3)
        self.input_layernorm = torch.nn.LayerNorm(3)
        self.final_norm = torch.nn.Module()
        self.final_norm.scale = torch.nn.Parameter(torch.ones(1, 3))  # 2-D, but a norm weight
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embedding.weight  # tied


def names(model, params):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return sorted(lookup[id(p)] for p in params)


def test_param_groups_split_weights_from_biases_and_norms():
    model = Tiny()
    groups = get_param_groups(model, weight_decay=0.1)
    assert [(g["weight_decay"], g["wd_mult"]) for g in groups] == [(0.1, 1.0), (0.0, 0.0)]
    assert names(model, groups[0]["params"]) == ["dense.weight", "embedding.weight"]
    assert names(model, groups[1]["params"]) == ["dense.bias", "final_norm.scale", "input_layernorm.bias",
                                                 "input_layernorm.weight"]


def test_param_groups_over_several_modules_dedupe_and_drop_empty():
    shared = torch.nn.Linear(2, 2, bias=False)
    groups = get_param_groups([shared, shared], weight_decay=0.0)
    assert len(groups) == 1 and len(groups[0]["params"]) == 1


def config(**overrides):
    values = dict(optimizer="adam", lr=0.1, weight_decay=0.5, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
                  sgd_momentum=0.9, clip_grad=1.0)
    values.update(overrides)
    return OptimizerConfig(**values)


def test_adamw_one_step_matches_hand_computation():
    weight = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    groups = [{"params": [weight], "weight_decay": 0.5}, {"params": [bias], "weight_decay": 0.0}]
    opt = build_optimizer(groups, config(), device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    grad_w = torch.tensor([[0.2, -0.1], [0.4, 0.05]], dtype=torch.float64)
    grad_b = torch.tensor([-0.3, 0.6], dtype=torch.float64)
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    weight.grad, bias.grad = grad_w.clone(), grad_b.clone()
    opt.step()
    # Step 1: m = (1-b1) g, v = (1-b2) g^2; bias-corrected m_hat = g, v_hat = g^2.
    # Decoupled decay: p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps).
    lr, wd, eps = 0.1, 0.5, 1e-8
    expected_w = w0 * (1 - lr * wd) - lr * grad_w / (grad_w.abs() + eps)
    expected_b = b0 - lr * grad_b / (grad_b.abs() + eps)
    torch.testing.assert_close(weight.detach(), expected_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias.detach(), expected_b, rtol=1e-12, atol=1e-12)
    # The same step with L2 decay (Adam's coupled form) would land elsewhere: the check discriminates.
    coupled = grad_w + wd * w0
    l2_w = w0 - lr * coupled / (coupled.abs() + eps)
    assert not torch.allclose(expected_w, l2_w)


def test_sgd_one_step_and_adamw_is_fused_on_cpu():
    weight = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = build_optimizer([{"params": [weight]}], config(optimizer="sgd", weight_decay=0.1), device_type="cpu")
    assert isinstance(opt, torch.optim.SGD)
    weight.grad = torch.tensor([0.5, 0.5])
    opt.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0 - 0.1 * (0.5 + 0.1),
                                                              -1.0 - 0.1 * (0.5 - 0.1)]))
    adam = build_optimizer([{"params": [weight]}], config(), device_type="cpu")
    assert adam.defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda():
    weight = torch.nn.Parameter(torch.ones(2, device="cuda"))
    assert build_optimizer([{"params": [weight]}], config(), device_type="cuda").defaults["fused"]


def test_errors():
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], config(), device_type="cpu")
    with pytest.raises(ValueError, match="--optimizer 'lamb'"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(1))]}], config(optimizer="lamb"),
                        device_type="cpu")
