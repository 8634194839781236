"""The name rules of megatron/model/tensor_parallel_layout.py agree with the split every
layer declares on its parameters (`tensor_model_parallel`, `partition_dim`,
`partition_stride`), for the classic and the Llama-style model at TP2."""
import pytest

from megatron.model.gpt_model import GPTModel
from megatron.model.tensor_parallel_layout import partition_of
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.harness import run_on_ranks


def _disagreements(variant):
    setup_parallel(2)
    config = make_config(variant, tp=2)
    model = GPTModel(config)
    found = []
    for name, param in model.named_parameters():
        rule = partition_of(name, swiglu=config.activation == "swiglu")
        declared = None
        if getattr(param, "tensor_model_parallel", False):
            declared = (param.partition_dim, getattr(param, "partition_stride", 1))
        got = None if rule is None else (rule.dim, rule.stride)
        if got != declared:
            found.append(f"{name}: rule {got}, layer {declared}")
    return found, len(list(model.parameters()))


@pytest.mark.parametrize("variant", ["default", "llama"])
def test_rules_match_the_layers(variant):
    found, count = run_on_ranks(_disagreements, variant, world_size=2)[0]
    assert count > 10
    assert not found, "\n".join(found)
