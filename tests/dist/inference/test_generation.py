"""Generation on a briefly trained (peaked) model: greedy tokens with and without the cache,
tensor parallelism (TP2 against TP1), seeds, stop tokens and the per-row token budget.

The model learns the sequence t -> (t + 1) mod 64 for 80 Adam steps, so its argmax margins
are large and a greedy token cannot flip on round-off (random tiny models have near-flat
logits where it can). Tolerance for TP2 against TP1 log-probabilities: 1e-4 absolute (fp32
logits of magnitude ~10; the layouts differ only in the order of the reductions).
"""
import functools

import pytest
import torch

from megatron.inference.generation import generate
from megatron.inference.model_loading import build_inference_model
from megatron.inference.sampling import SamplingParams
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.harness import run_on_ranks

SEQ, PERIOD, VOCAB = 16, 64, 120  # VOCAB: the "tokenizer's" size inside the padded 128
LOGPROB_ATOL = 1e-4
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44, 45], [60]]


def train_on_the_cycle(variant):
    setup_parallel(1)
    torch.manual_seed(0)
    model = GPTModel(make_config(variant), parallel_output=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        start = torch.randint(0, PERIOD, (8, 1), generator=generator)
        sequence = (start + torch.arange(SEQ + 1)) % PERIOD
        positions = torch.arange(SEQ).expand(8, SEQ)
        loss = model(sequence[:, :-1], positions, None, labels=sequence[:, 1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, loss.item()


@functools.lru_cache(maxsize=None)
def trained(variant):
    state, loss = run_on_ranks(train_on_the_cycle, variant, world_size=1)[0]
    assert loss < 0.05, f"the cycle was not learned (loss {loss})"
    return state


class _InMemoryCheckpoint:
    """What build_inference_model reads from a checkpoint: full tensors by name."""
    load_dir, tag = "<memory>", "trained"

    def __init__(self, state):
        self.state = state

    def tensors(self):
        return iter(self.state.items())


def generate_on_ranks(state, variant, tp, *, use_cache=True, sampling=None, seed=None,
                      stop_tokens=(), tokens_to_generate=8, prompts=PROMPTS,
                      params_dtype=torch.float32):
    setup_parallel(tp)
    config = make_config(variant, tp=tp, perform_initialization=False, params_dtype=params_dtype)
    model = build_inference_model(config, _InMemoryCheckpoint(state))
    results = generate(model, prompts, tokens_to_generate=tokens_to_generate,
                       vocab_size=VOCAB, max_length=SEQ, return_logprobs=True,
                       use_cache=use_cache, sampling=sampling or SamplingParams(greedy=True),
                       seed=seed, stop_tokens=stop_tokens)
    return [(r.tokens, r.finished, r.logprobs) for r in results]


def _continues_the_cycle(tokens, prompt_length):
    return all(tokens[i] == (tokens[i - 1] + 1) % PERIOD for i in range(prompt_length, len(tokens)))


@pytest.mark.parametrize("variant", ["default", "llama"])
def test_greedy_with_and_without_cache(variant):
    state = trained(variant)
    cached = run_on_ranks(generate_on_ranks, state, variant, 1, world_size=1)[0]
    recomputed = run_on_ranks(generate_on_ranks, state, variant, 1, use_cache=False,
                              world_size=1)[0]
    for (tokens, finished, logprobs), (tokens_r, _, logprobs_r), prompt in zip(
            cached, recomputed, PROMPTS):
        assert tokens == tokens_r
        assert not finished
        # Each row: its prompt, then 8 tokens, capped by the model's 16 positions.
        assert tokens[:len(prompt)] == prompt
        assert len(tokens) == min(len(prompt) + 8, SEQ)
        assert _continues_the_cycle(tokens, len(prompt)), tokens
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(logprobs_r), atol=LOGPROB_ATOL)


@pytest.mark.parametrize("variant", ["default", "llama"])
def test_tensor_parallel_equals_one_rank(variant):
    state = trained(variant)
    one = run_on_ranks(generate_on_ranks, state, variant, 1, world_size=1)[0]
    two = run_on_ranks(generate_on_ranks, state, variant, 2, world_size=2)
    assert two[0] == two[1]  # both ranks hold the same gathered logits and tokens
    for (tokens, _, logprobs), (tokens_2, _, logprobs_2) in zip(one, two[0]):
        assert tokens == tokens_2
        difference = (torch.tensor(logprobs) - torch.tensor(logprobs_2)).abs().max().item()
        assert difference <= LOGPROB_ATOL, difference


def test_seeded_sampling_is_reproducible_and_ranks_agree():
    state = trained("default")
    # A high temperature flattens the peaked distribution, so draws really differ by seed.
    hot = SamplingParams(temperature=5.0)
    first = run_on_ranks(generate_on_ranks, state, "default", 2, sampling=hot, seed=3,
                         world_size=2)
    again = run_on_ranks(generate_on_ranks, state, "default", 2, sampling=hot, seed=3,
                         world_size=2)
    other = run_on_ranks(generate_on_ranks, state, "default", 2, sampling=hot, seed=4,
                         world_size=2)
    tokens = [row[0] for row in first[0]]
    assert [row[0] for row in first[1]] == tokens  # both tensor-parallel ranks
    assert [row[0] for row in again[0]] == tokens
    assert [row[0] for row in other[0]] != tokens
    assert not all(_continues_the_cycle(t, len(p)) for t, p in zip(tokens, PROMPTS))


def test_top_k_one_is_greedy():
    state = trained("default")
    greedy = run_on_ranks(generate_on_ranks, state, "default", 1, world_size=1)[0]
    top1 = run_on_ranks(generate_on_ranks, state, "default", 1,
                        sampling=SamplingParams(temperature=5.0, top_k=1), seed=9,
                        world_size=1)[0]
    assert [row[0] for row in top1] == [row[0] for row in greedy]


def test_stop_token_ends_a_row_without_it():
    state = trained("default")
    results = run_on_ranks(generate_on_ranks, state, "default", 1, stop_tokens=(10, 46),
                           world_size=1)[0]
    (first, finished_first, _), (second, finished_second, _), (third, finished_third, _) = results
    assert first == [5, 6, 7, 8, 9] and finished_first
    assert second == [40, 41, 42, 43, 44, 45] and finished_second  # 46 comes first
    assert third == [60, 61, 62, 63, 0, 1, 2, 3, 4] and not finished_third


@pytest.mark.parametrize("variant", ["default", "llama"])
def test_bf16_greedy_tokens_equal_fp32(variant):
    """bf16 weights and activations (7 mantissa bits) still pick the peaked model's tokens."""
    state = trained(variant)
    fp32 = run_on_ranks(generate_on_ranks, state, variant, 1, world_size=1)[0]
    bf16 = run_on_ranks(generate_on_ranks, state, variant, 2, params_dtype=torch.bfloat16,
                        world_size=2)[0]
    assert [row[0] for row in bf16] == [row[0] for row in fp32]
