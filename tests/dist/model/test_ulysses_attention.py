"""GPTModel with DeepSpeed-Ulysses sequence parallelism (SP 2 and 4) vs one rank holding
the whole sequence.

Same seed and layout-independent init, so both start from the same weights. The reference
is the plain single-rank model (no all-to-all, no chunking) with the masked mean loss
written out here. Each SP rank feeds its chunk of the sequence (its global positions,
labels and loss mask; the whole attention mask) and the chunks' losses are scaled by the
whole sequence's token count; summing the gradients over the SP ranks (what DeepSpeed's
reduction over the sequence-data group does) must give the full gradient. fp32
tolerances: per-token losses and logits rtol 1e-5 atol 1e-5, gradients rtol 1e-4 atol 1e-6
(differences come only from the order of partial sums).
"""
import pytest
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.model.gpt_model import GPTModel
from megatron.training.batch import masked_mean_loss, sequence_parallel_chunk
from tests.dist.model.model_utils import full_params_and_grads, make_batch, make_config
from tests.harness import run_on_ranks

LOGIT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)

CASES = {
    # Upstream GPT: learned absolute positions, MHA, and a document-boundary mask.
    "gpt_document_mask": (dict(), True),
    # Llama-style: rotary (angles must start at the chunk's global position), GQA.
    "llama": (dict(position_embedding_type="rope", rotary_percent=0.5, activation="swiglu",
                   normalization="rmsnorm", num_key_value_heads=4,
                   untie_embeddings_and_output_weights=True, add_bias_linear=False), False),
    # torch's scaled_dot_product_attention as the core attention.
    "sdpa_rope": (dict(position_embedding_type="rope", use_flash_attn=True), False),
}


def _reference(case: str):
    overrides, document_mask = CASES[case]
    parallel_state.initialize_model_parallel(1, 1)
    model = GPTModel(make_config(**overrides))
    tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=document_mask)
    losses = model(tokens, position_ids, mask, labels=labels)
    loss = (losses * loss_mask).sum() / loss_mask.sum()
    loss.backward()
    with torch.no_grad():
        logits = model(tokens, position_ids, mask)
    result = full_params_and_grads(model)
    result.update(losses=losses.detach(), logits=logits, loss=loss.detach())
    return result


def _gather_sequence(tensor: torch.Tensor) -> torch.Tensor:
    """[b, s/N, ...] chunks of every SP rank -> [b, s, ...]."""
    chunks = [torch.empty_like(tensor) for _ in range(parallel_state.get_sequence_parallel_world_size())]
    dist.all_gather(chunks, tensor.detach().contiguous(),
                    group=parallel_state.get_sequence_parallel_group())
    return torch.cat(chunks, dim=1)


def _ulysses(case: str, sequence_parallel_size: int):
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)  # DistributedAttention's comm
    overrides, document_mask = CASES[case]
    parallel_state.initialize_model_parallel(1, 1, sequence_parallel_size)
    model = GPTModel(make_config(ds_sequence_parallel_size=sequence_parallel_size, **overrides))
    tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=document_mask)
    whole = {"tokens": tokens, "position_ids": position_ids, "attention_mask": mask,
             "labels": labels, "loss_mask": loss_mask}
    if mask is None:
        del whole["attention_mask"]
    chunk = sequence_parallel_chunk(
        whole, sequence_parallel_rank=parallel_state.get_sequence_parallel_rank(),
        sequence_parallel_size=sequence_parallel_size)
    group = parallel_state.get_sequence_parallel_group()
    losses = model(chunk["tokens"], chunk["position_ids"], chunk.get("attention_mask"),
                   labels=chunk["labels"])
    loss = masked_mean_loss(losses, chunk["loss_mask"], sequence_parallel_group=group)
    loss.backward()
    for param in model.parameters():
        dist.all_reduce(param.grad, group=group)
    with torch.no_grad():
        logits = model(chunk["tokens"], chunk["position_ids"], chunk.get("attention_mask"))
    summed_loss = loss.detach().clone()
    dist.all_reduce(summed_loss, group=group)
    result = full_params_and_grads(model)
    result.update(losses=_gather_sequence(losses), logits=_gather_sequence(logits),
                  loss=summed_loss, local_tokens=chunk["tokens"].shape[1])
    return result


_REFERENCES = {}


@pytest.mark.parametrize("sequence_parallel_size", [2, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ulysses_matches_single_rank(case, sequence_parallel_size):
    if case not in _REFERENCES:
        _REFERENCES[case] = run_on_ranks(_reference, case, world_size=1)[0]
    ref = _REFERENCES[case]
    results = run_on_ranks(_ulysses, case, sequence_parallel_size,
                           world_size=sequence_parallel_size)
    assert ref["logits"].std() > 0.1  # not a vacuous comparison
    for got in results:
        assert got["local_tokens"] == ref["losses"].shape[1] // sequence_parallel_size
        for name, value in ref["params"].items():
            assert torch.equal(value, got["params"][name]), f"init differs for {name}"
        torch.testing.assert_close(got["logits"], ref["logits"], **LOGIT_TOL)
        torch.testing.assert_close(got["losses"], ref["losses"], **LOGIT_TOL)
        torch.testing.assert_close(got["loss"], ref["loss"], **LOGIT_TOL)
        for name, grad in ref["grads"].items():
            assert grad.abs().max() > 0, name
            torch.testing.assert_close(got["grads"][name], grad, **GRAD_TOL,
                                       msg=lambda m: f"{name}: {m}")


def _state_dict_keys(sequence_parallel_size: int):
    parallel_state.initialize_model_parallel(1, 1, sequence_parallel_size)
    if sequence_parallel_size > 1:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    model = GPTModel(make_config(ds_sequence_parallel_size=sequence_parallel_size))
    return sorted(model.state_dict())


def test_ulysses_adds_nothing_to_the_state_dict():
    """Checkpoints of SP and non-SP runs hold the same tensors under the same names."""
    plain = run_on_ranks(_state_dict_keys, 1, world_size=1)[0]
    assert run_on_ranks(_state_dict_keys, 2, world_size=2) == [plain, plain]
