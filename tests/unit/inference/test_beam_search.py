"""Beam search and the server's generation options on a bigram table whose answers are
worked out by hand (log-probabilities from the table's probabilities with math.log; fp32
model, tolerance 1e-6 absolute)."""
import math

import pytest

from megatron.inference.beam_search import beam_search
from megatron.inference.generation import generate
from megatron.inference.sampling import SamplingParams
from tests.unit.inference.toy_models import Bigram, one_process  # noqa: F401 - fixture

STOP = 3
# Row t: P(next | t) over tokens 0..3 (3 is the stop token).
EARLY_STOP = [[0.01, 0.30, 0.09, 0.60],
              [0.01, 0.05, 0.04, 0.90],
              [0.01, 0.01, 0.97, 0.01],
              [0.25, 0.25, 0.25, 0.25]]
# Greedy takes 0 -> 1 (0.5) -> 0 (0.34): 0.17; the best pair is 0 -> 2 -> 2: 0.4 x 0.9.
GREEDY_TRAP = [[0.099, 0.50, 0.40, 0.001],
               [0.34, 0.33, 0.329, 0.001],
               [0.049, 0.05, 0.90, 0.001],
               [0.25, 0.25, 0.25, 0.25]]
ATOL = 1e-6


def test_beam_search_finds_what_greedy_misses(one_process):
    model = Bigram(GREEDY_TRAP)
    greedy = generate(model, [[0]], tokens_to_generate=2, vocab_size=4, max_length=8)
    assert greedy[0].tokens == [0, 1, 0]
    beams = beam_search(model, [0], beam_width=2, tokens_to_generate=2, vocab_size=4,
                        max_length=8, stop_token=STOP)
    assert [beam.tokens for beam in beams] == [[0, 2, 2], [0, 1, 0]]
    # length 2, length_penalty 1: the mean log-probability of the generated tokens
    expected = [(math.log(0.40) + math.log(0.90)) / 2, (math.log(0.50) + math.log(0.34)) / 2]
    assert [beam.score for beam in beams] == pytest.approx(expected, abs=ATOL)


def test_finished_hypotheses_end_the_search(one_process):
    # Step 1: 0 -> 3 (0.6) finishes, 1 (0.3) and 2 (0.09) stay open. Step 2: 0 1 -> 3
    # (0.27) finishes; the best open score, log(0.27) / 2, cannot beat the worst finished.
    beams = beam_search(Bigram(EARLY_STOP), [0], beam_width=2, tokens_to_generate=5,
                        vocab_size=4, max_length=16, stop_token=STOP)
    assert [beam.tokens for beam in beams] == [[0, 3], [0, 1, 3]]
    assert [beam.score for beam in beams] == pytest.approx(
        [math.log(0.6), math.log(0.3 * 0.9) / 2], abs=ATOL)


def test_length_penalty_and_limits(one_process):
    beams = beam_search(Bigram(GREEDY_TRAP), [0], beam_width=2, tokens_to_generate=2,
                        vocab_size=4, max_length=8, stop_token=STOP, length_penalty=2.0)
    assert beams[0].score == pytest.approx((math.log(0.4) + math.log(0.9)) / 4, abs=ATOL)
    # max_length caps the generated tokens: only one more position
    beams = beam_search(Bigram(GREEDY_TRAP), [0, 2], beam_width=1, tokens_to_generate=5,
                        vocab_size=4, max_length=3, stop_token=STOP)
    assert [beam.tokens for beam in beams] == [[0, 2, 2]]
    with pytest.raises(ValueError, match="no room to generate"):
        beam_search(Bigram(GREEDY_TRAP), [0, 2, 2], beam_width=2, tokens_to_generate=5,
                    vocab_size=4, max_length=3, stop_token=STOP)


def test_banned_pair_changes_the_choice_not_the_logprobs(one_process):
    model = Bigram(GREEDY_TRAP)
    result = generate(model, [[0]], tokens_to_generate=1, vocab_size=4, max_length=8,
                      banned_pairs=[(0, 1)], return_logprobs=True)[0]
    assert result.tokens == [0, 2]
    assert result.logprobs == pytest.approx([math.log(0.40)], abs=ATOL)
    beams = beam_search(model, [0], beam_width=1, tokens_to_generate=1, vocab_size=4,
                        max_length=8, stop_token=STOP, banned_pairs=[(0, 2), (0, 1)])
    assert beams[0].tokens == [0, 0]


def test_stop_token_kept_with_include_stop(one_process):
    model = Bigram(EARLY_STOP)
    kept = generate(model, [[1], [2]], tokens_to_generate=3, vocab_size=4, max_length=8,
                    stop_tokens=[STOP], include_stop=True, return_logprobs=True)
    dropped = generate(model, [[1], [2]], tokens_to_generate=3, vocab_size=4, max_length=8,
                       stop_tokens=[STOP], return_logprobs=True)
    assert [r.tokens for r in kept] == [[1, 3], [2, 2, 2, 2]]
    assert [r.tokens for r in dropped] == [[1], [2, 2, 2, 2]]
    assert [r.finished for r in kept] == [True, False]
    assert kept[0].logprobs == pytest.approx([math.log(0.9)], abs=ATOL)
    assert dropped[0].logprobs == []


def test_stop_sequence_may_start_in_the_prompt(one_process):
    model = Bigram(GREEDY_TRAP)  # from 2, greedy stays at 2
    results = generate(model, [[0, 2], [1]], tokens_to_generate=4, vocab_size=4,
                       max_length=8, stop_sequences=[[2, 2]], include_stop=True)
    # row 0: the prompt's 2 and the first generated 2; row 1: 1 -> 0 -> 1 -> 0 -> 1
    assert [r.tokens for r in results] == [[0, 2, 2], [1, 0, 1, 0, 1]]
    assert [r.finished for r in results] == [True, False]
    with pytest.raises(ValueError, match="include_stop"):
        generate(model, [[0]], tokens_to_generate=2, vocab_size=4, max_length=8,
                 stop_sequences=[[2, 2]])


def test_top_p_decays_to_its_bound():
    params = SamplingParams(top_p=0.9, top_p_decay=0.5, top_p_bound=0.3)
    assert params.after_token().top_p == pytest.approx(0.45)
    assert params.after_token().after_token().top_p == pytest.approx(0.3)
    assert SamplingParams(top_p=0.9).after_token().top_p == 0.9
    with pytest.raises(ValueError, match="need top_p"):
        SamplingParams(top_p_decay=0.5)
    with pytest.raises(ValueError, match="top_p_bound"):
        SamplingParams(top_p=0.5, top_p_bound=0.6)
