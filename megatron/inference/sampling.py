"""Choosing the next token from the logits: greedy, or sampling with temperature, top-k and
top-p (nucleus), drawn from an explicit generator so a seed reproduces the samples."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen (upstream's `--greedy`, `--temperature`, `--top_k`,
    `--top_p`). Greedy ignores the others; top-k and top-p may not be combined."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 0.0
    """Keep the smallest set of most likely tokens whose probability reaches p (0: all)."""
    top_p_decay: float = 0.0
    """After each token, top_p becomes top_p * top_p_decay (0: constant; the server's
    `top_p_decay`)."""
    top_p_bound: float = 0.0
    """The decayed top_p never drops below this (0: no bound; the server's `top_p_bound`)."""

    def __post_init__(self) -> None:
        if self.greedy:
            return
        if not self.temperature > 0.0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"--top_p must be in [0, 1], got {self.top_p}")
        if self.top_k > 0 and self.top_p > 0.0:
            raise ValueError(f"--top_k {self.top_k} and --top_p {self.top_p} cannot be "
                             "combined; give one of them")
        if not 0.0 <= self.top_p_decay <= 1.0:
            raise ValueError(f"top_p_decay must be in [0, 1], got {self.top_p_decay}")
        if (self.top_p_decay > 0.0 or self.top_p_bound > 0.0) and self.top_p == 0.0:
            raise ValueError("top_p_decay and top_p_bound need top_p")
        if not 0.0 <= self.top_p_bound <= self.top_p:
            raise ValueError(f"top_p_bound must be in [0, top_p={self.top_p}], got "
                             f"{self.top_p_bound}")

    def after_token(self) -> "SamplingParams":
        """The parameters for the next token: top_p decayed (never below top_p_bound)."""
        if self.greedy or self.top_p == 0.0 or self.top_p_decay == 0.0:
            return self
        return dataclasses.replace(self, top_p=max(self.top_p * self.top_p_decay,
                                                   self.top_p_bound))


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """fp32 logits [b, V] scaled by the temperature, with the tokens that top-k / top-p
    exclude set to -inf (the most likely token always stays)."""
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if params.top_p > 0.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p.
        before = torch.cumsum(probabilities, dim=-1) - probabilities
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, params: SamplingParams,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The chosen token of every row of `logits` [b, V] -> [b] (int64)."""
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    probabilities = torch.softmax(filtered_logits(logits, params), dim=-1)
    if generator is not None and generator.device != probabilities.device:
        probabilities = probabilities.to(generator.device)
    return torch.multinomial(probabilities, 1, generator=generator).view(-1).to(logits.device)
