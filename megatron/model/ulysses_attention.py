"""DeepSpeed-Ulysses sequence parallelism around the core attention.

Each rank of a sequence-parallel group holds seq_length / N consecutive tokens of the same
samples. Everything but the core attention works token by token, so it runs on the local
chunk unchanged; attention needs every key, so DeepSpeed's `DistributedAttention` trades
data with one all-to-all per tensor: q, k, v go from [s/N, b, heads] to [s, b, heads/N]
(the whole sequence for a slice of the heads), the ordinary core attention runs on that,
and the context goes back to [s/N, b, heads].
"""
from __future__ import annotations

from typing import Any, Optional

import torch

# The dimension of the [s, b, heads, head_dim] activations that holds the batch.
_BATCH_DIM = 1


class _HeadsLayout(torch.nn.Module):
    """The core attention with its context returned per head, [s, b, heads, head_dim]: the
    layout DeepSpeed's return all-to-all splits by head."""

    def __init__(self, core_attention: torch.nn.Module) -> None:
        super().__init__()
        self.core_attention = core_attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        context = self.core_attention(query, key, value, attention_mask)
        return context.view(*query.shape)


class UlyssesAttention(torch.nn.Module):
    """`core_attention` over the whole sequence, called with this rank's sequence chunk.

    Takes query/key/value [s/N, b, heads, head_dim] (key/value already repeated to one per
    query head) and the attention mask of the WHOLE sequence ([.., s, s], or None for plain
    causal attention); returns the context [s/N, b, heads * head_dim] of the local tokens.
    Holds no parameters, so state dicts do not change.
    """

    def __init__(self, core_attention: torch.nn.Module, *, sequence_parallel_group: Any) -> None:
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention

        # scatter_idx 2 / gather_idx 0: split heads, gather the sequence (and back).
        self.distributed_attention = DistributedAttention(
            _HeadsLayout(core_attention), sequence_parallel_group, scatter_idx=2, gather_idx=0)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        context = self.distributed_attention(query, key, value, _BATCH_DIM, None, attention_mask)
        local_seq, batch = context.shape[:2]
        return context.reshape(local_seq, batch, -1)
