"""Turning a batch of `seq_length + 1` token samples into model inputs, labels and masks."""
from typing import Dict, Optional, Tuple

import torch

from megatron.core import parallel_state, tensor_parallel


def get_ltor_masks_and_position_ids(tokens: torch.Tensor, *, eod_token: int,
                                    reset_position_ids: bool, reset_attention_mask: bool,
                                    eod_mask_loss: bool
                                    ) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Left-to-right masks and positions, with upstream's document-reset semantics.

    Returns (attention_mask, loss_mask, position_ids). attention_mask is a bool tensor,
    True where attention is NOT allowed, of shape [b, 1, s, s] with reset_attention_mask and
    [1, 1, s, s] otherwise (plain causal).
    With reset_position_ids, positions restart at 0 after every EOD token; with
    reset_attention_mask, a token attends only to tokens of its own document (the EOD token
    closes the document it ends). With eod_mask_loss, positions holding EOD get no loss.
    """
    batch_size, seq_length = tokens.shape
    device = tokens.device
    positions = torch.arange(seq_length, device=device)
    loss_mask = torch.ones(batch_size, seq_length, dtype=torch.float, device=device)
    if eod_mask_loss:
        loss_mask[tokens == eod_token] = 0.0

    # A document starts at 0 and right after each EOD; segment = index of the document.
    is_eod = tokens == eod_token
    starts_after = torch.zeros_like(is_eod)
    starts_after[:, 1:] = is_eod[:, :-1]
    segment = torch.cumsum(starts_after.long(), dim=1)
    start_index = torch.where(starts_after, positions.expand(batch_size, -1),
                              torch.zeros_like(positions).expand(batch_size, -1))
    start_index = torch.cummax(start_index, dim=1).values

    if reset_position_ids:
        position_ids = positions.expand(batch_size, -1) - start_index
    else:
        position_ids = positions.unsqueeze(0).expand(batch_size, -1).clone()

    causal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=device).triu(diagonal=1)
    if reset_attention_mask:
        other_document = segment.unsqueeze(2) != segment.unsqueeze(1)  # [b, q, k]
        attention_mask = (causal.unsqueeze(0) | other_document).unsqueeze(1)
    else:
        attention_mask = causal.view(1, 1, seq_length, seq_length)
    return attention_mask, loss_mask, position_ids


def get_batch(data_iterator, *, eod_token: int, reset_position_ids: bool,
              reset_attention_mask: bool, eod_mask_loss: bool) -> Dict[str, torch.Tensor]:
    """Read one micro batch on TP rank 0, broadcast it over the TP group, build the inputs."""
    data = next(data_iterator) if data_iterator is not None else None
    text = tensor_parallel.broadcast_data(["text"], data, torch.int64)["text"]
    tokens = text[:, :-1].contiguous()
    labels = text[:, 1:].contiguous()
    attention_mask, loss_mask, position_ids = get_ltor_masks_and_position_ids(
        tokens, eod_token=eod_token, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "attention_mask": attention_mask, "position_ids": position_ids}


def masked_mean_loss(per_token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the per-token loss over the positions that count."""
    loss_mask = loss_mask.reshape(-1).float()
    return torch.sum(per_token_loss.reshape(-1).float() * loss_mask) / loss_mask.sum()


def tensor_parallel_source_holds_data() -> bool:
    """Only TP rank 0 reads from the data loader; the others receive a broadcast."""
    return parallel_state.get_tensor_model_parallel_rank() == 0
