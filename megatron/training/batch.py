"""Turning a batch of `seq_length + 1` token samples into model inputs, labels and masks."""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

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


def sequence_parallel_chunk(batch: Dict[str, torch.Tensor], *, sequence_parallel_rank: int,
                            sequence_parallel_size: int) -> Dict[str, torch.Tensor]:
    """This rank's consecutive seq_length / N tokens of every per-token tensor
    (DeepSpeed-Ulysses). Masks and positions were built on the whole sequence, so they
    keep their global values; the attention mask stays whole, because the core attention
    sees every position."""
    if sequence_parallel_size == 1:
        return batch
    seq_length = batch["tokens"].shape[1]
    if seq_length % sequence_parallel_size:
        raise ValueError(f"--seq-length {seq_length} must be divisible by "
                         f"--ds-sequence-parallel-size {sequence_parallel_size}")
    chunk = seq_length // sequence_parallel_size
    start = sequence_parallel_rank * chunk
    return {name: (value if name == "attention_mask"
                   else value[:, start:start + chunk].contiguous())
            for name, value in batch.items()}


def get_batch(data_iterator, *, eod_token: int, reset_position_ids: bool,
              reset_attention_mask: bool, eod_mask_loss: bool) -> Dict[str, torch.Tensor]:
    """Read one micro batch on TP rank 0, broadcast it over the TP group, build the inputs
    and keep this rank's chunk of the sequence (DeepSpeed-Ulysses; all of it otherwise)."""
    data = next(data_iterator) if data_iterator is not None else None
    text = tensor_parallel.broadcast_data(["text"], data, torch.int64)["text"]
    tokens = text[:, :-1].contiguous()
    labels = text[:, 1:].contiguous()
    attention_mask, loss_mask, position_ids = get_ltor_masks_and_position_ids(
        tokens, eod_token=eod_token, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss)
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
             "attention_mask": attention_mask, "position_ids": position_ids}
    return sequence_parallel_chunk(
        batch, sequence_parallel_rank=parallel_state.get_sequence_parallel_rank(),
        sequence_parallel_size=parallel_state.get_sequence_parallel_world_size())


def masked_mean_loss(per_token_loss: torch.Tensor, loss_mask: torch.Tensor, *,
                     sequence_parallel_group: Optional[Any] = None) -> torch.Tensor:
    """Mean of the per-token loss over the positions that count.

    With a sequence-parallel group each rank holds a chunk of the sequence: it divides its
    own sum by the count of the WHOLE sequence, so the chunks' losses (and gradients) add
    up to the mean over the whole sequence: DeepSpeed sums the gradients over the
    sequence-parallel ranks (dividing by the data-parallel size only), and the engine sums
    the reported losses the same way."""
    loss_mask = loss_mask.reshape(-1).float()
    count = loss_mask.sum()
    if sequence_parallel_group is not None and dist.get_world_size(sequence_parallel_group) > 1:
        count = count.detach().clone()
        dist.all_reduce(count, group=sequence_parallel_group)
    return torch.sum(per_token_loss.reshape(-1).float() * loss_mask) / count


def tensor_parallel_source_holds_data() -> bool:
    """Only TP rank 0 reads from the data loader; the others receive a broadcast."""
    return parallel_state.get_tensor_model_parallel_rank() == 0
