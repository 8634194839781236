"""Generation against transformers' GPT2LMHeadModel holding the same weights (fp32):
per-token log-probabilities of prompts and of generated continuations agree to 1e-5
absolute, and greedy continuations are equal on a briefly trained (peaked) model.

transformers is the independent implementation; the weights cross over through
megatron.conversion.hf_mapping, whose own logits parity is tested in tests/dist/conversion.
"""
import pytest
import torch
import transformers

from megatron.inference.generation import generate
from megatron.inference.model_loading import build_inference_model
from tests.dist.inference.test_generation import _InMemoryCheckpoint
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.dist.model.test_gpt2_hf_parity import (N_EMBD, N_HEAD, N_LAYER, N_POS, PADDED_VOCAB,
                                                  VOCAB, _hf_model, convert_hf_gpt2_state_dict)
from tests.harness import run_on_ranks

LOGPROB_ATOL = 1e-5
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44, 45], [60]]


def _generate(state, prompts, tokens_to_generate, tp=1):
    setup_parallel(tp)
    config = make_config(tp=tp, num_layers=N_LAYER, hidden_size=N_EMBD, num_attention_heads=N_HEAD,
                         max_position_embeddings=N_POS, seq_length=N_POS,
                         padded_vocab_size=PADDED_VOCAB, openai_gelu=True, layernorm_epsilon=1e-5,
                         perform_initialization=False)
    model = build_inference_model(config, _InMemoryCheckpoint(state))
    return [(r.tokens, r.logprobs) for r in generate(
        model, prompts, tokens_to_generate=tokens_to_generate, vocab_size=VOCAB,
        max_length=N_POS, return_logprobs=True)]


def _hf_logprobs(hf, tokens):
    with torch.no_grad():
        logits = hf(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]


@pytest.mark.parametrize("tp", [1, 2])
def test_logprobs_equal_transformers(tp):
    hf = _hf_model("gelu_new")
    state = convert_hf_gpt2_state_dict(hf.state_dict(), hf.config, padded_vocab_size=PADDED_VOCAB)
    results = run_on_ranks(_generate, state, PROMPTS, 6, tp, world_size=tp)[0]
    for (tokens, logprobs), prompt in zip(results, PROMPTS):
        assert tokens[:len(prompt)] == prompt and len(tokens) == len(prompt) + 6
        expected = _hf_logprobs(hf, tokens)  # transformers scores the whole sequence
        difference = (torch.tensor(logprobs) - expected).abs().max().item()
        assert difference <= LOGPROB_ATOL, difference


def _trained_hf_model():
    hf = _hf_model("gelu_new").train()
    torch.manual_seed(0)
    with torch.no_grad():  # back to small weights: the cycle is learned fast from there
        for param in hf.parameters():
            param.mul_(0.2)
    optimizer = torch.optim.Adam(hf.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        start = torch.randint(0, 64, (8, 1), generator=generator)
        sequence = (start + torch.arange(17)) % 64
        loss = hf(sequence, labels=sequence).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()
    return hf.eval()


def test_greedy_equals_transformers_on_a_peaked_model():
    hf = _trained_hf_model()
    state = convert_hf_gpt2_state_dict(hf.state_dict(), hf.config, padded_vocab_size=PADDED_VOCAB)
    results = run_on_ranks(_generate, state, PROMPTS, 8, world_size=1)[0]
    for (tokens, _), prompt in zip(results, PROMPTS):
        with torch.no_grad():
            expected = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)[0].tolist()
        assert tokens == expected
        assert tokens[-1] == (prompt[-1] + 8) % 64  # it learned the cycle
