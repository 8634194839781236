"""A bigram "model" with a hand-written next-token table, for generation logic without a
transformer: the logits at a position are log P(next | token there), whatever came before."""
from types import SimpleNamespace

import pytest
import torch

import megatron.inference.beam_search as beam_search_module
import megatron.inference.generation as generation_module


class Bigram(torch.nn.Module):
    """Called as GPTModel is in generation; `padded_logit` fills an extra vocabulary column
    (a padded row, which generation must never choose nor count)."""

    def __init__(self, probabilities, padded_logit: float = 5.0) -> None:
        super().__init__()
        table = torch.log(torch.tensor(probabilities, dtype=torch.float32))
        padding = torch.full((table.shape[0], 1), padded_logit)
        self.table = torch.cat([table, padding], dim=1)
        self.language_model = SimpleNamespace(encoder=SimpleNamespace(layers=[None]))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generation reads the device here

    def forward(self, tokens, positions, attention_mask, kv_cache=None,
                last_position_only=False):
        logits = self.table[tokens]
        return logits[:, -1:] if last_position_only else logits


@pytest.fixture
def one_process(monkeypatch):
    """No process group: the tensor-parallel broadcast of decisions is the identity."""
    monkeypatch.setattr(generation_module, "_broadcast_in_tensor_parallel_group", lambda t: t)
    monkeypatch.setattr(beam_search_module, "_broadcast_in_tensor_parallel_group", lambda t: t)
