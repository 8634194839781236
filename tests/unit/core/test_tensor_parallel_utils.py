"""Pure helpers: divisibility, vocabulary ranges, strided slices, seeded init, RNG tracker."""
import pytest
import torch

from megatron.core.tensor_parallel.initialization import derive_seed, layout_independent_init
from megatron.core.tensor_parallel.random import RNGStatesTracker
from megatron.core.tensor_parallel.utils import (
    VocabUtility,
    divide,
    split_along_dim_with_stride,
    split_tensor_along_last_dim,
)


def test_divide_and_errors():
    assert divide(12, 4) == 3
    with pytest.raises(ValueError, match="10 is not divisible by 4"):
        divide(10, 4)


def test_split_tensor_along_last_dim():
    x = torch.arange(24.).view(2, 12)
    chunks = split_tensor_along_last_dim(x, 3, contiguous_split_chunks=True)
    assert [c.tolist() for c in chunks[1]] == [[4., 5., 6., 7.], [16., 17., 18., 19.]]
    assert all(c.is_contiguous() for c in chunks)


def test_vocab_ranges():
    assert VocabUtility.vocab_range_from_global_vocab_size(64, 2, 4) == (32, 48)
    assert VocabUtility.vocab_range_from_per_partition_vocab_size(16, 3, 4) == (48, 64)


def test_strided_split_takes_interleaved_blocks():
    rows = torch.arange(12.).view(12, 1)
    # stride 3, 2 ranks: 6 blocks of 2 rows; rank 1 keeps blocks 1, 3, 5.
    got = split_along_dim_with_stride(rows, 0, num_partitions=2, rank=1, stride=3)
    assert got.view(-1).tolist() == [2., 3., 6., 7., 10., 11.]
    cols = torch.arange(8.).view(1, 8)
    assert split_along_dim_with_stride(cols, 1, 4, 2).view(-1).tolist() == [4., 5.]


def test_derive_seed_is_stable_and_key_sensitive():
    # sha256-based: the value must not change between processes or releases.
    assert derive_seed(1234, "a.weight") == derive_seed(1234, "a.weight")
    assert derive_seed(1234, "a.weight") != derive_seed(1234, "b.weight")
    assert derive_seed(1234, "a.weight") != derive_seed(1235, "a.weight")
    assert 0 <= derive_seed(7, "x") < 2 ** 63


def test_layout_independent_init_ignores_and_preserves_global_rng():
    def init(t):
        torch.nn.init.normal_(t, std=0.02)

    torch.manual_seed(0)
    first = layout_independent_init((6, 4), init, seed=5, key="layer.weight")
    after_first = torch.rand(3)
    torch.manual_seed(99)
    torch.rand(100)  # a different position in the global stream
    second = layout_independent_init((6, 4), init, seed=5, key="layer.weight")
    assert torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_first)  # the global stream was not consumed
    other = layout_independent_init((6, 4), init, seed=5, key="other.weight")
    assert not torch.equal(first, other)
    assert abs(first.std().item() - 0.02) < 0.01


def test_tracker_fork_add_and_errors():
    tracker = RNGStatesTracker()
    tracker.add("stream", 42)
    with pytest.raises(ValueError, match="seed 42"):
        tracker.add("another", 42)
    with pytest.raises(ValueError, match="stream"):
        tracker.add("stream", 43)
    with pytest.raises(KeyError, match="missing"):
        with tracker.fork("missing"):
            pass
    torch.manual_seed(1)
    expected_default = torch.rand(4)
    torch.manual_seed(1)
    with tracker.fork("stream"):
        inside_first = torch.rand(4)
    assert torch.equal(torch.rand(4), expected_default)  # default stream untouched by the fork
    with tracker.fork("stream"):
        inside_second = torch.rand(4)
    generator = torch.Generator().manual_seed(42)
    assert torch.equal(inside_first, torch.rand(4, generator=generator))
    assert torch.equal(inside_second, torch.rand(4, generator=generator))  # stream advanced
    saved = tracker.get_states()
    with tracker.fork("stream"):
        third = torch.rand(4)
    tracker.set_states(saved)
    with tracker.fork("stream"):
        assert torch.equal(torch.rand(4), third)
    tracker.reset()
    assert tracker.get_states() == {}
