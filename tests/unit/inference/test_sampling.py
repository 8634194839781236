"""Token choice: top-k and top-p filters on hand-computed distributions, and bad settings."""
import math

import pytest
import torch

from megatron.inference.sampling import SamplingParams, filtered_logits, next_tokens

# probabilities 0.5, 0.25, 0.125, 0.125
LOGITS = torch.log(torch.tensor([[0.125, 0.5, 0.125, 0.25]]))


def _kept(params):
    return torch.isfinite(filtered_logits(LOGITS, params))[0].tolist()


def test_top_k_keeps_the_k_most_likely():
    assert _kept(SamplingParams(top_k=2)) == [False, True, False, True]
    assert _kept(SamplingParams(top_k=10)) == [True] * 4


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert _kept(SamplingParams(top_p=0.5)) == [False, True, False, False]
    assert _kept(SamplingParams(top_p=0.6)) == [False, True, False, True]
    assert _kept(SamplingParams(top_p=0.75)) == [False, True, False, True]
    assert sum(_kept(SamplingParams(top_p=0.8))) == 3


def test_temperature_scales_logits():
    scaled = filtered_logits(LOGITS, SamplingParams(temperature=2.0))
    assert torch.allclose(scaled, LOGITS / 2)


def test_greedy_and_sampling_frequencies():
    assert next_tokens(LOGITS, SamplingParams(greedy=True)).tolist() == [1]
    generator = torch.Generator().manual_seed(0)
    draws = next_tokens(LOGITS.expand(4000, 4), SamplingParams(), generator)
    frequency = (draws == 1).float().mean().item()
    assert abs(frequency - 0.5) < 4 * math.sqrt(0.25 / 4000)


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "--temperature must be positive"),
    (dict(top_k=-1), "--top_k must be >= 0"),
    (dict(top_p=1.5), r"--top_p must be in \[0, 1\]"),
    (dict(top_k=5, top_p=0.9), "cannot be combined"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
