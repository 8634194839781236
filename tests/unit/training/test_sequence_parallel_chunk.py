"""Each DeepSpeed-Ulysses rank's chunk of a batch: its tokens with their global positions,
labels and loss mask, and the attention mask of the whole sequence."""
import torch

from megatron.training.batch import get_ltor_masks_and_position_ids, sequence_parallel_chunk

EOD = 0


def _whole_batch():
    tokens = torch.tensor([[5, 6, EOD, 7, 8, 9, EOD, 3], [1, 2, 3, 4, 5, 6, 7, 8]])
    labels = tokens + 100
    attention_mask, loss_mask, position_ids = get_ltor_masks_and_position_ids(
        tokens, eod_token=EOD, reset_position_ids=True, reset_attention_mask=True,
        eod_mask_loss=True)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "attention_mask": attention_mask, "position_ids": position_ids}


def test_chunks_keep_global_values():
    whole = _whole_batch()
    second = sequence_parallel_chunk(whole, sequence_parallel_rank=1, sequence_parallel_size=2)
    assert torch.equal(second["tokens"], torch.tensor([[8, 9, EOD, 3], [5, 6, 7, 8]]))
    assert torch.equal(second["labels"], second["tokens"] + 100)
    # Positions restart after each EOD of the WHOLE sequence (document 2 began at index 3).
    assert torch.equal(second["position_ids"], torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]]))
    assert torch.equal(second["loss_mask"], torch.tensor([[1., 1., 0., 1.], [1., 1., 1., 1.]]))
    assert second["attention_mask"] is whole["attention_mask"]  # [b, 1, 8, 8], not cut


def test_chunks_concatenate_to_the_whole_batch():
    whole = _whole_batch()
    chunks = [sequence_parallel_chunk(whole, sequence_parallel_rank=rank, sequence_parallel_size=4)
              for rank in range(4)]
    for name in ("tokens", "labels", "loss_mask", "position_ids"):
        assert all(chunk[name].shape[1] == 2 for chunk in chunks)
        assert torch.equal(torch.cat([chunk[name] for chunk in chunks], dim=1), whole[name])


def test_size_one_is_the_batch_itself():
    whole = _whole_batch()
    assert sequence_parallel_chunk(whole, sequence_parallel_rank=0, sequence_parallel_size=1) is whole
