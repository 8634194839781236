"""Masks and position ids against a direct per-sample loop written from the definition."""
import itertools

import pytest
import torch

from megatron.training.batch import get_ltor_masks_and_position_ids, masked_mean_loss

EOD = 7


def _reference(tokens, reset_position_ids, reset_attention_mask, eod_mask_loss):
    batch, seq = tokens.shape
    allowed = torch.zeros(batch, 1, seq, seq, dtype=torch.bool)
    positions = torch.zeros(batch, seq, dtype=torch.long)
    loss_mask = torch.ones(batch, seq)
    for b in range(batch):
        document_start = 0
        for t in range(seq):
            if t > 0 and tokens[b, t - 1] == EOD:
                document_start = t  # a new document starts right after an EOD
            positions[b, t] = t - document_start if reset_position_ids else t
            for k in range(t + 1):
                allowed[b, 0, t, k] = (k >= document_start) if reset_attention_mask else True
            if eod_mask_loss and tokens[b, t] == EOD:
                loss_mask[b, t] = 0
    return ~allowed, loss_mask, positions


@pytest.mark.parametrize("reset_position_ids,reset_attention_mask,eod_mask_loss",
                         list(itertools.product([False, True], repeat=3)))
def test_masks_match_reference(reset_position_ids, reset_attention_mask, eod_mask_loss):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 9, (3, 17), generator=generator)
    tokens[0, 0] = EOD      # EOD first
    tokens[1, -1] = EOD     # EOD last
    tokens[2] = 1           # no EOD at all
    mask, loss_mask, positions = get_ltor_masks_and_position_ids(
        tokens, eod_token=EOD, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss)
    ref_mask, ref_loss_mask, ref_positions = _reference(
        tokens, reset_position_ids, reset_attention_mask, eod_mask_loss)
    assert torch.equal(positions, ref_positions)
    assert torch.equal(loss_mask, ref_loss_mask)
    assert torch.equal(mask.expand_as(ref_mask), ref_mask)
    assert mask.dtype == torch.bool
    assert mask.shape[0] == (3 if reset_attention_mask else 1)


def test_masked_mean_loss():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert masked_mean_loss(loss, mask).item() == pytest.approx((1 + 3 + 6) / 3)
