"""merge_shards / split_full on hand-built tensors: row, column and strided (SwiGLU) splits."""
import pytest
import torch

from megatron.model.tensor_parallel_layout import Partition, merge_shards, partition_of, split_full


def test_rules_by_name():
    assert partition_of("language_model.embedding.word_embeddings.weight", swiglu=False) == Partition(0)
    assert partition_of("language_model.encoder.layers.3.mlp.dense_h_to_4h.bias",
                        swiglu=True) == Partition(0, 2)
    assert partition_of("language_model.encoder.layers.3.mlp.dense_h_to_4h.weight",
                        swiglu=False) == Partition(0, 1)
    assert partition_of("layers.0.self_attention.dense.weight", swiglu=False) == Partition(1)
    assert partition_of("self_attention.dense.bias", swiglu=False) is None
    assert partition_of("language_model.embedding.position_embeddings.weight", swiglu=False) is None
    assert partition_of("lm_head.weight", swiglu=False) == Partition(0)


def test_swiglu_rows_interleave_gate_and_up_per_rank():
    # Full [gate rows g0..g3; up rows u0..u3]; two ranks hold [g0 g1 u0 u1] and [g2 g3 u2 u3].
    full = torch.tensor([[10.], [11.], [12.], [13.], [20.], [21.], [22.], [23.]])
    shards = split_full(full, Partition(0, 2), tensor_model_parallel_size=2)
    assert shards[0].flatten().tolist() == [10., 11., 20., 21.]
    assert shards[1].flatten().tolist() == [12., 13., 22., 23.]
    assert torch.equal(merge_shards(shards, Partition(0, 2)), full)


def test_column_split_and_replicated():
    full = torch.arange(12.).reshape(2, 6)
    shards = split_full(full, Partition(1), tensor_model_parallel_size=3)
    assert [shard.tolist() for shard in shards] == [[[0., 1.], [6., 7.]], [[2., 3.], [8., 9.]],
                                                    [[4., 5.], [10., 11.]]]
    assert torch.equal(merge_shards(shards, Partition(1)), full)
    assert split_full(full, None, tensor_model_parallel_size=2) == [full, full]


def test_indivisible_size_is_refused():
    with pytest.raises(ValueError, match="does not split into 4 tensor-parallel ranks x 2 blocks"):
        split_full(torch.zeros(12, 3), Partition(0, 2), tensor_model_parallel_size=4)
