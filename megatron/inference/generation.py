"""Generating continuations of a batch of prompts with GPTModel and a key/value cache.

Prompts of different lengths stay aligned: every row is at the same position at every step
(so one causal mask, one set of learned or rotary positions and one cache length serve the
whole batch). The shortest prompt is prefilled at once; from there each step feeds one token
per row, which is the row's next prompt token while its prompt lasts and the chosen token
afterwards. Tensor-parallel ranks run the same loop on the same prompts: each step the
token chosen on the first rank of the group is broadcast, so the ranks never diverge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.inference.sampling import SamplingParams, next_tokens
from megatron.model.kv_cache import KVCache


@dataclass
class Generation:
    """One prompt's result."""

    tokens: List[int]
    """The prompt followed by the generated tokens (without the stop token, unless
    `include_stop`)."""
    prompt_length: int
    finished: bool
    """True when generation stopped at the end-of-document or stop token, False when it
    ran out of tokens_to_generate or of the model's length."""
    logprobs: Optional[List[float]] = None
    """log p(token i | tokens before it) for i = 1 .. len(tokens) - 1 (prompt and generated),
    under the model's distribution over the real (unpadded) vocabulary; None unless asked."""

    @property
    def generated(self) -> List[int]:
        return self.tokens[self.prompt_length:]


def _broadcast_in_tensor_parallel_group(tensor: torch.Tensor) -> torch.Tensor:
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(tensor, parallel_state.get_tensor_model_parallel_src_rank(),
                       group=parallel_state.get_tensor_model_parallel_group())
    return tensor


def share_from_rank_0(value: Any) -> Any:
    """`value` of global rank 0 on every rank (prompts, requests); itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _without_banned(logits: torch.Tensor, previous: torch.Tensor,
                    banned: List[Tuple[int, int]]) -> torch.Tensor:
    """`logits` [b, V] with token b at -inf in the rows whose previous token is a, for every
    banned pair (a, b)."""
    if not banned:
        return logits
    logits = logits.clone()
    for before, after in banned:
        logits[previous == before, after] = float("-inf")
    return logits


def _ends_with_any(tokens: torch.Tensor, position: int,
                   sequences: List[torch.Tensor]) -> torch.Tensor:
    """[b] bool: the row's tokens up to and including `position` end with one of `sequences`."""
    hit = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for sequence in sequences:
        start = position + 1 - sequence.numel()
        if start >= 0:
            hit |= (tokens[:, start:position + 1] == sequence).all(dim=-1)
    return hit


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *,
             tokens_to_generate: int, vocab_size: int, max_length: int,
             sampling: SamplingParams = SamplingParams(greedy=True),
             stop_tokens: Iterable[int] = (), seed: Optional[int] = None,
             return_logprobs: bool = False, use_cache: bool = True,
             stop_sequences: Iterable[Sequence[int]] = (), include_stop: bool = False,
             banned_pairs: Iterable[Tuple[int, int]] = ()) -> List[Generation]:
    """Continue every prompt (lists of token ids, at least one token each) by up to
    `tokens_to_generate` tokens, stopping a row at any of `stop_tokens`.

    Options of the text-generation server: a row also stops when its tokens end with one of
    `stop_sequences` (the last one generated, earlier ones possibly from the prompt);
    `include_stop` keeps the stop token (or sequence) in `tokens` and `logprobs`; a pair
    (a, b) of `banned_pairs` means b is never chosen right after a (log-probabilities stay
    the model's). `sampling.top_p_decay` shrinks top_p after every step, as upstream does.

    `model` is a GPTModel with gathered logits in eval mode; `vocab_size` is the tokenizer's
    (padded rows are never chosen and do not count in log-probabilities); `max_length` is
    the model's longest sequence (prompt plus generated tokens never exceed it; ValueError
    when a prompt alone does). `seed` makes sampling reproducible; `use_cache=False`
    recomputes the whole sequence every step (upstream's --recompute).
    """
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    if tokens_to_generate < 0:
        raise ValueError(f"tokens_to_generate must be >= 0, got {tokens_to_generate}")
    lengths_list = [len(prompt) for prompt in prompts]
    longest = max(lengths_list)
    if longest > max_length:
        raise ValueError(f"a prompt of {longest} tokens exceeds the model's maximum sequence "
                         f"length {max_length}")
    device = next(model.parameters()).device
    batch = len(prompts)
    total = min(longest + tokens_to_generate, max_length)
    tokens = torch.zeros(batch, total, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
    lengths = torch.tensor(lengths_list, device=device)
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    sequences = [torch.tensor(list(sequence), dtype=torch.long, device=device)
                 for sequence in stop_sequences if len(sequence) > 0]
    if sequences and not include_stop:
        raise ValueError("stop_sequences need include_stop=True (part of a sequence may be "
                         "in the prompt)")
    banned = sorted(set((int(a), int(b)) for a, b in banned_pairs))
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    cache = KVCache(num_layers=len(model.language_model.encoder.layers),
                    max_length=total) if use_cache else None

    def logits_of(start: int, end: int) -> torch.Tensor:
        """fp32 logits [b, end - start, vocab] of positions start..end-1 (from 0 without a
        cache); of position end - 1 only ([b, 1, vocab]) when no log-probabilities are asked."""
        first = start if use_cache else 0
        positions = torch.arange(first, end, device=device).unsqueeze(0).expand(batch, -1)
        last_only = not return_logprobs or end - start == 1
        logits = model(tokens[:, first:end], positions, None, kv_cache=cache,
                       last_position_only=last_only).float()
        if not last_only:
            logits = logits[:, start - first:, :]
        logits[..., vocab_size:] = float("-inf")
        return logits

    logprobs = torch.zeros(batch, total, device=device) if return_logprobs else None
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # stopped at a stop token
    # Each row generates at most tokens_to_generate tokens after its own prompt.
    end_of_row = torch.clamp(lengths + tokens_to_generate, max=total)
    position = min(lengths_list)
    logits = logits_of(0, position)
    if return_logprobs and position > 1:
        log_softmax = torch.log_softmax(logits[:, :-1], dim=-1)
        logprobs[:, 1:position] = log_softmax.gather(-1, tokens[:, 1:position, None])[..., 0]
    while position < total:
        last = logits[:, -1]
        choice_logits = _without_banned(last, tokens[:, position - 1], banned)
        chosen = _broadcast_in_tensor_parallel_group(
            next_tokens(choice_logits, sampling, generator))
        sampling = sampling.after_token()
        in_prompt = lengths > position
        token = torch.where(in_prompt, tokens[:, position], chosen)
        tokens[:, position] = token
        if return_logprobs:
            logprobs[:, position] = torch.log_softmax(last, dim=-1).gather(-1, token[:, None])[:, 0]
        hit = torch.isin(token, stop) | _ends_with_any(tokens, position, sequences)
        stopped = ~in_prompt & ~done & (position < end_of_row) & hit
        end_of_row[stopped] = position + 1 if include_stop else position
        done |= stopped
        position += 1
        if bool((position >= end_of_row).all()):
            break
        logits = logits_of(position - 1, position)

    results = []
    for row in range(batch):
        end = int(end_of_row[row])
        row_logprobs = None
        if return_logprobs:
            row_logprobs = logprobs[row, 1:end].tolist()
        results.append(Generation(tokens=tokens[row, :end].tolist(),
                                  prompt_length=lengths_list[row], finished=bool(done[row]),
                                  logprobs=row_logprobs))
    return results
