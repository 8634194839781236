"""GPTModel on TP=1 vs TP=2 vs TP=4 (with and without sequence parallelism).

Same seed and layout-independent init: every gathered parameter must be bit-identical to
the TP=1 model's, and logits, per-token loss and every gathered parameter gradient must
agree within fp32 tolerance (differences come only from the order of the partial sums
across ranks): logits/loss rtol 1e-5 atol 1e-5, gradients rtol 1e-4 atol 1e-6.
"""
import pytest
import torch

from megatron.core import tensor_parallel
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import (VARIANTS, full_params_and_grads, gather_tp, make_batch,
                                          make_config, setup_parallel)
from tests.harness import run_on_ranks

LOGIT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def run_gpt(variant: str, tp: int, sequence_parallel: bool, document_mask: bool):
    """Forward + backward of the masked mean loss; rank 0 returns everything gathered."""
    setup_parallel(tp)
    config = make_config(variant, tp=tp, sequence_parallel=sequence_parallel)
    model = GPTModel(config)
    tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=document_mask)
    losses = model(tokens, position_ids, mask, labels=labels)
    loss = (losses * loss_mask).sum() / loss_mask.sum()
    loss.backward()
    tensor_parallel.allreduce_sequence_parallel_gradients(model.parameters())
    with torch.no_grad():
        logits = gather_tp(model(tokens, position_ids, mask), partition_dim=-1)
    result = full_params_and_grads(model)
    result.update(losses=losses.detach(), logits=logits)
    return result if torch.distributed.get_rank() == 0 else None


_REFERENCE = {}


def _reference(variant: str, document_mask: bool):
    key = (variant, document_mask)
    if key not in _REFERENCE:
        _REFERENCE[key] = run_on_ranks(run_gpt, variant, 1, False, document_mask, world_size=1)[0]
    return _REFERENCE[key]


def _compare(ref, got):
    assert ref["params"].keys() == got["params"].keys()
    for name, value in ref["params"].items():
        assert torch.equal(value, got["params"][name]), f"init differs for {name}"
    torch.testing.assert_close(got["logits"], ref["logits"], **LOGIT_TOL)
    torch.testing.assert_close(got["losses"], ref["losses"], **LOGIT_TOL)
    for name, grad in ref["grads"].items():
        assert grad is not None and got["grads"][name] is not None, name
        torch.testing.assert_close(got["grads"][name], grad, **GRAD_TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("tp,sequence_parallel", [(2, False), (4, False), (2, True), (4, True)])
def test_tensor_parallel_matches_single_rank(variant, tp, sequence_parallel):
    document_mask = variant == "default"  # default GPT also exercises an explicit mask
    ref = _reference(variant, document_mask)
    got = run_on_ranks(run_gpt, variant, tp, sequence_parallel, document_mask, world_size=tp)[0]
    _compare(ref, got)


def test_reference_is_not_degenerate():
    """The comparison above would be vacuous if gradients were zero or logits constant."""
    ref = _reference("llama", False)
    assert ref["logits"].std() > 0.1
    for name, grad in ref["grads"].items():
        assert grad.abs().max() > 0, name
