"""Beam search over one prompt (the text-generation server's `beam_width`), with the
key/value cache reordered as beams are kept, dropped and duplicated.

Facts kept from upstream Megatron-DeepSpeed: each step looks at the 2 x beam_width best
(beam, token) extensions by summed log-probability; an extension ending in the stop token
becomes a finished hypothesis only when it ranks among the first beam_width, scored
sum(log p) / generated_length ** length_penalty; search ends when beam_width hypotheses
are finished and none of the open beams can beat the worst of them, or at the length limit
(then the open beams are scored the same way). Unlike upstream, the returned sequences end
at their stop token (no padding after it), and probabilities are over the tokenizer's
vocabulary (padded rows excluded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import torch

from megatron.inference.generation import _broadcast_in_tensor_parallel_group, _without_banned
from megatron.model.kv_cache import KVCache


@dataclass
class Beam:
    """One returned hypothesis."""

    tokens: List[int]
    """The prompt followed by the generated tokens (the stop token included when reached)."""
    score: float
    """sum of the generated tokens' log-probabilities / generated length ** length_penalty."""


class _Finished:
    """The best `width` finished hypotheses (upstream's BeamHypotheses, as a sorted list)."""

    def __init__(self, width: int, length_penalty: float) -> None:
        self.width = width
        self.length_penalty = length_penalty
        self.beams: List[Beam] = []

    def score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs / length ** self.length_penalty

    def add(self, tokens: List[int], sum_logprobs: float, length: int) -> None:
        score = self.score(sum_logprobs, length)
        if len(self.beams) < self.width or score > self.beams[-1].score:
            self.beams.append(Beam(tokens=tokens, score=score))
            self.beams.sort(key=lambda beam: beam.score, reverse=True)
            del self.beams[self.width:]

    def cannot_improve(self, best_sum_logprobs: float, length: int) -> bool:
        return (len(self.beams) >= self.width
                and self.beams[-1].score >= self.score(best_sum_logprobs, length))


@torch.no_grad()
def beam_search(model: torch.nn.Module, prompt: Sequence[int], *, beam_width: int,
                tokens_to_generate: int, vocab_size: int, max_length: int, stop_token: int,
                length_penalty: float = 1.0,
                banned_pairs: Iterable[Tuple[int, int]] = ()) -> List[Beam]:
    """The `beam_width` best continuations of `prompt` (best first) by up to
    `tokens_to_generate` tokens. `model`, `vocab_size`, `max_length` as for `generate`.
    Tensor-parallel ranks take every decision from the first rank of their group."""
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    prompt_length = len(prompt)
    if prompt_length == 0:
        raise ValueError("the prompt needs at least one token")
    total = min(prompt_length + tokens_to_generate, max_length)
    if prompt_length >= total:
        raise ValueError(f"no room to generate: the prompt has {prompt_length} tokens, "
                         f"tokens_to_generate is {tokens_to_generate} and the model's maximum "
                         f"sequence length is {max_length}")
    device = next(model.parameters()).device
    banned = sorted(set((int(a), int(b)) for a, b in banned_pairs))
    tokens = torch.tensor([list(prompt)] * beam_width, dtype=torch.long, device=device)
    cache = KVCache(num_layers=len(model.language_model.encoder.layers), max_length=total)
    scores = torch.zeros(beam_width, device=device)
    finished = _Finished(beam_width, length_penalty)
    start, done = 0, False
    for position in range(prompt_length, total):
        positions = torch.arange(start, position, device=device).unsqueeze(0)
        positions = positions.expand(tokens.shape[0], -1)
        logits = model(tokens[:, start:position], positions, None, kv_cache=cache)[:, -1].float()
        logits[:, vocab_size:] = float("-inf")
        logits = _without_banned(logits, tokens[:, -1], banned)
        candidates = torch.log_softmax(logits, dim=-1) + scores[:, None]
        # All beams are the prompt at the first step: extend only the first.
        flat = candidates[0] if position == prompt_length else candidates.view(-1)
        best_scores, best = torch.topk(flat, min(2 * beam_width, flat.numel()))
        best_scores = _broadcast_in_tensor_parallel_group(best_scores.contiguous())
        best = _broadcast_in_tensor_parallel_group(best.contiguous())
        width = logits.shape[-1]
        generated = position + 1 - prompt_length
        kept: List[Tuple[int, int, float]] = []  # (beam, token, summed log-probability)
        for rank, (index, score) in enumerate(zip(best.tolist(), best_scores.tolist())):
            beam, token = divmod(index, width)
            if token == stop_token:
                if rank < beam_width:
                    finished.add(tokens[beam].tolist() + [token], score, generated)
            else:
                kept.append((beam, token, score))
            if len(kept) == beam_width:
                break
        if not kept or finished.cannot_improve(float(best_scores.max()), generated):
            done = True
            break
        rows = torch.tensor([beam for beam, _, _ in kept], dtype=torch.long, device=device)
        new_tokens = torch.tensor([[token] for _, token, _ in kept], dtype=torch.long,
                                  device=device)
        tokens = torch.cat([tokens.index_select(0, rows), new_tokens], dim=1)
        scores = torch.tensor([score for _, _, score in kept], device=device)
        cache.select_rows(rows)
        start = position
    if not done:
        generated = tokens.shape[1] - prompt_length
        for row in range(tokens.shape[0]):
            finished.add(tokens[row].tolist(), float(scores[row]), generated)
    return finished.beams
