"""Beam search on the model that learned t -> (t + 1) mod 64 (tests/dist/inference/
test_generation.py): the key/value cache reordered with the beams gives what recomputing
would (beam width 1 equals greedy `generate`, which is tested against recomputation), and
two tensor-parallel ranks agree with one. Score tolerance: 1e-4 absolute, as for the
log-probabilities there (fp32; the layouts differ only in reduction order)."""
import torch

from megatron.inference.beam_search import beam_search
from megatron.inference.generation import generate
from megatron.inference.model_loading import build_inference_model
from tests.dist.inference.test_generation import (PERIOD, SEQ, VOCAB, _InMemoryCheckpoint,
                                                  trained)
from tests.dist.model.model_utils import make_config, setup_parallel
from tests.harness import run_on_ranks

SCORE_ATOL = 1e-4
PROMPT = [20, 21, 22]


def beams_on_ranks(state, variant, tp, *, beam_width, stop_token=VOCAB - 1,
                   tokens_to_generate=6):
    setup_parallel(tp)
    config = make_config(variant, tp=tp, perform_initialization=False)
    model = build_inference_model(config, _InMemoryCheckpoint(state))
    beams = beam_search(model, PROMPT, beam_width=beam_width,
                        tokens_to_generate=tokens_to_generate, vocab_size=VOCAB,
                        max_length=SEQ, stop_token=stop_token)
    greedy = generate(model, [PROMPT], tokens_to_generate=tokens_to_generate,
                      vocab_size=VOCAB, max_length=SEQ, return_logprobs=True)[0]
    return [(beam.tokens, beam.score) for beam in beams], greedy.tokens, greedy.logprobs


def test_width_one_is_greedy_and_beams_are_distinct():
    state = trained("default")
    beams, greedy, logprobs = run_on_ranks(beams_on_ranks, state, "default", 1, beam_width=1,
                                           world_size=1)[0]
    assert [tokens for tokens, _ in beams] == [greedy]
    assert greedy == PROMPT + [(22 + i) % PERIOD for i in range(1, 7)]
    mean_generated = sum(logprobs[len(PROMPT) - 1:]) / 6
    assert abs(beams[0][1] - mean_generated) <= SCORE_ATOL
    wide, _, _ = run_on_ranks(beams_on_ranks, state, "default", 1, beam_width=4,
                              world_size=1)[0]
    assert wide[0][0] == greedy  # the peaked path is also the best beam
    assert len({tuple(tokens) for tokens, _ in wide}) == 4
    scores = [score for _, score in wide]
    assert scores == sorted(scores, reverse=True)


def test_tensor_parallel_equals_one_rank():
    state = trained("llama")
    one = run_on_ranks(beams_on_ranks, state, "llama", 1, beam_width=3, stop_token=25,
                       world_size=1)[0][0]
    two = run_on_ranks(beams_on_ranks, state, "llama", 2, beam_width=3, stop_token=25,
                       world_size=2)
    assert two[0][0] == two[1][0]
    assert [tokens for tokens, _ in two[0][0]] == [tokens for tokens, _ in one]
    difference = torch.tensor([s for _, s in one]) - torch.tensor([s for _, s in two[0][0]])
    assert difference.abs().max().item() <= SCORE_ATOL
    # 25 follows the prompt 20 21 22 after 23, 24: the best hypothesis stops there
    assert one[0][0] == PROMPT + [23, 24, 25]
