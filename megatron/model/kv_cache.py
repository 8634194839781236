"""The key/value cache of generation: each layer's keys and values of the tokens seen so far,
so every step runs the model on the new tokens only.

Buffers are allocated on a layer's first `extend` ([max_length, batch, kv heads per rank,
head dim], the model's activation layout) and filled in place; `advance` moves the shared
length once all layers took the new tokens. Every row of the batch is at the same position
(the generation loop keeps prompts aligned), so one length serves the whole batch.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch


class KVCache:
    """Keys and values of `num_layers` layers for up to `max_length` positions."""

    def __init__(self, *, num_layers: int, max_length: int) -> None:
        self.max_length = max_length
        self.length = 0
        """Positions already cached; the next tokens are at positions length, length + 1, ..."""
        self._keys: List[Optional[torch.Tensor]] = [None] * num_layers
        self._values: List[Optional[torch.Tensor]] = [None] * num_layers

    def extend(self, layer_index: int, key: torch.Tensor, value: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' key/value [s_new, b, g, hn] of layer `layer_index` (0-based)
        and return the keys and values of all positions so far, [length + s_new, b, g, hn]."""
        end = self.length + key.shape[0]
        if end > self.max_length:
            raise ValueError(f"the key/value cache holds {self.max_length} positions; "
                             f"{end} were asked for")
        if self._keys[layer_index] is None:
            shape = (self.max_length, *key.shape[1:])
            self._keys[layer_index] = key.new_empty(shape)
            self._values[layer_index] = value.new_empty(shape)
        keys, values = self._keys[layer_index], self._values[layer_index]
        keys[self.length:end] = key
        values[self.length:end] = value
        return keys[:end], values[:end]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (in that order, repeats allowed) of every layer: beam
        search reorders its beams between steps."""
        for store in (self._keys, self._values):
            for layer, buffer in enumerate(store):
                if buffer is not None:
                    store[layer] = buffer.index_select(1, rows)

    def advance(self, num_tokens: int) -> None:
        """Every layer has cached the `num_tokens` new positions."""
        self.length += num_tokens
