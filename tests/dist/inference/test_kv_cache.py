"""Generation with the key/value cache computes the same function as recomputing the whole
sequence: GPTModel's logits token by token with the cache equal its logits of the full
sequence, and `generate`'s log-probabilities of prompts of different lengths in one batch
equal each prompt's own full-sequence log-softmax.

Models: the classic GPT (learned positions, GeLU, LayerNorm, MHA, tied head) and the
Llama-style one (rotary on half of each head, SwiGLU, RMSNorm, 2 queries per key/value
head, untied head, no biases), random fp32 weights, both attention paths (the classic
baddbmm/softmax one and SDPA). Tolerance: 1e-5 x the largest |logit| (fp32; the two paths
differ only in the order of the attention sums).
"""
import pytest
import torch

from megatron.inference.generation import generate
from megatron.model.gpt_model import GPTModel
from megatron.model.kv_cache import KVCache
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.harness import run_on_ranks

SEQ = 16
TOL = 1e-5


def _model(variant, sdpa):
    setup_parallel(1)
    return GPTModel(make_config(variant, use_flash_attn=sdpa), parallel_output=False).eval()


def cached_vs_full_logits(variant, sdpa, prefill, batch):
    model = _model(variant, sdpa)
    tokens = torch.randint(0, 120, (batch, SEQ), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(SEQ).expand(batch, SEQ)
    with torch.no_grad():
        full = model(tokens, positions, None)
        cache = KVCache(num_layers=2, max_length=SEQ)
        parts = [model(tokens[:, :prefill], positions[:, :prefill], None, kv_cache=cache)]
        for index in range(prefill, SEQ):
            parts.append(model(tokens[:, index:index + 1], positions[:, index:index + 1], None,
                               kv_cache=cache))
    return full, torch.cat(parts, dim=1), cache.length


@pytest.mark.parametrize("variant", ["default", "llama"])
@pytest.mark.parametrize("sdpa", [False, True], ids=["classic", "sdpa"])
@pytest.mark.parametrize("prefill", [1, 6])
@pytest.mark.parametrize("batch", [3, 8])
def test_cached_logits_equal_full_sequence(variant, sdpa, prefill, batch):
    # 8 rows per decode step: the swapped few-rows product in fp32 (few_rows_linear)
    full, cached, length = run_on_ranks(cached_vs_full_logits, variant, sdpa, prefill, batch,
                                        world_size=1)[0]
    assert length == SEQ
    scale = full.abs().max()
    assert scale > 0.1
    error = (full - cached).abs().max()
    assert error <= TOL * scale, f"max |diff| {error:.3g} vs logit scale {scale:.3g}"


def mixed_length_logprobs(variant, sdpa, use_cache):
    model = _model(variant, sdpa)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 120, (length,), generator=generator).tolist()
               for length in (3, 11, 7)]
    results = generate(model, prompts, tokens_to_generate=0, vocab_size=125, max_length=SEQ,
                       return_logprobs=True, use_cache=use_cache)
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            tokens = torch.tensor([prompt])
            logits = model(tokens, torch.arange(len(prompt))[None], None)[0].float()
            log_softmax = torch.log_softmax(logits[:, :125], dim=-1)
            expected.append(log_softmax[:-1].gather(-1, tokens[0, 1:, None])[:, 0])
    return [(result.tokens, result.logprobs) for result in results], prompts, expected


@pytest.mark.parametrize("variant", ["default", "llama"])
@pytest.mark.parametrize("sdpa", [False, True], ids=["classic", "sdpa"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_prompt_logprobs_of_a_mixed_batch(variant, sdpa, use_cache):
    results, prompts, expected = run_on_ranks(mixed_length_logprobs, variant, sdpa, use_cache,
                                              world_size=1)[0]
    for (tokens, logprobs), prompt, reference in zip(results, prompts, expected):
        assert tokens == prompt
        assert len(logprobs) == len(prompt) - 1
        error = (torch.tensor(logprobs) - reference).abs().max().item()
        assert error <= TOL * reference.abs().max().item() + 1e-6, error


def last_position_logits(variant):
    model = _model(variant, True)
    tokens = torch.randint(0, 120, (2, SEQ), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(SEQ).expand(2, SEQ)
    with torch.no_grad():
        return (model(tokens, positions, None)[:, -1:],
                model(tokens, positions, None, last_position_only=True))


@pytest.mark.parametrize("variant", ["default", "llama"])
def test_last_position_only_is_the_last_row_of_the_logits(variant):
    full, last = run_on_ranks(last_position_logits, variant, world_size=1)[0]
    assert last.shape == full.shape == (2, 1, 128)
    assert torch.allclose(last, full, rtol=0, atol=TOL * full.abs().max())
