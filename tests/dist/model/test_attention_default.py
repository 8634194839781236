"""The default core attention (the faster of SDPA and the classic path per call) against
`--use-classic-attention`: on the whole GPTModel, fp32, the logits and every parameter
gradient agree within fp32 round-off (rtol 1e-5, atol 1e-6 here; the two paths differ only
in the order of the softmax reductions), with and without a document mask, and the default
really takes SDPA where it should (fp32 on CPU without active dropout)."""
import pytest
import torch

from megatron.model import attention
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import make_batch, make_config, setup_parallel
from tests.harness import run_on_ranks


def logits_and_grads(variant, classic, document_mask):
    setup_parallel(1)
    model = GPTModel(make_config(variant, use_classic_attention=classic), parallel_output=False)
    tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=document_mask)
    calls = {"sdpa": 0}
    sdpa = attention.CoreAttention._sdpa

    def counting_sdpa(self, *args):
        calls["sdpa"] += 1
        return sdpa(self, *args)

    attention.CoreAttention._sdpa = counting_sdpa
    try:
        logits = model(tokens, position_ids, mask)
    finally:
        attention.CoreAttention._sdpa = sdpa
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1), reduction="none")
    (loss * loss_mask.reshape(-1)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads, calls["sdpa"]


@pytest.mark.parametrize("variant", ["default", "llama"])
@pytest.mark.parametrize("document_mask", [False, True], ids=["causal", "document"])
def test_default_attention_matches_classic(variant, document_mask):
    default, classic = (run_on_ranks(logits_and_grads, variant, use_classic, document_mask,
                                     world_size=1)[0] for use_classic in (False, True))
    assert default[2] == 2 and classic[2] == 0  # SDPA in both layers by default, never classic
    torch.testing.assert_close(default[0], classic[0], rtol=1e-5, atol=1e-6)
    assert default[1].keys() == classic[1].keys()
    for name in default[1]:
        torch.testing.assert_close(default[1][name], classic[1][name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_sdpa_is_faster_predicate():
    fp32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    assert attention.sdpa_is_faster(fp32, dropout_active=False)
    assert not attention.sdpa_is_faster(fp32, dropout_active=True)
    assert not attention.sdpa_is_faster(bf16, dropout_active=False)


def test_flags_force_one_path():
    with pytest.raises(ValueError, match="--use-classic-attention"):
        make_config(use_flash_attn=True, use_classic_attention=True)
