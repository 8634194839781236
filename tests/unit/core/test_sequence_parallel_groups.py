"""Golden rank lists of DeepSpeed-Ulysses sequence parallelism (no processes)."""
import pytest

from megatron.core.parallel_state import build_rank_groups


def test_golden_4_ranks_sp2_dp2():
    # Sequence-parallel ranks are adjacent (the all-to-all is the heaviest traffic).
    groups = build_rank_groups(4, 1, 1, 2)
    assert groups.ds_sequence_parallel_size == 2 and groups.data_parallel_size == 2
    assert groups.sequence == ((0, 1), (2, 3))
    assert groups.data == ((0, 2), (1, 3))
    assert groups.sequence_data == ((0, 1, 2, 3),)
    assert groups.tensor == ((0,), (1,), (2,), (3,))
    assert groups.model == ((0,), (1,), (2,), (3,))


def test_golden_8_ranks_sp4_dp2():
    groups = build_rank_groups(8, 1, 1, 4)
    assert groups.sequence == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert groups.data == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert groups.sequence_data == (tuple(range(8)),)


def test_without_sequence_parallelism_the_groups_are_unchanged():
    plain = build_rank_groups(8, 2, 2)
    assert plain.ds_sequence_parallel_size == 1
    assert plain.sequence_data == plain.data == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert sorted(plain.sequence) == [(rank,) for rank in range(8)]


@pytest.mark.parametrize("world_size,sp", [(4, 1), (4, 2), (4, 4), (8, 2), (12, 3)])
def test_every_rank_in_one_group_of_each_kind(world_size, sp):
    groups = build_rank_groups(world_size, 1, 1, sp)
    for kind in ("sequence", "data", "sequence_data"):
        members = sorted(rank for ranks in getattr(groups, kind) for rank in ranks)
        assert members == list(range(world_size)), kind
    # A sequence group and a data group meet in exactly one rank.
    for sequence in groups.sequence:
        for data in groups.data:
            assert len(set(sequence) & set(data)) == 1


def test_world_must_divide_by_the_sequence_parallel_size():
    with pytest.raises(ValueError, match="ds_sequence_parallel_size=3"):
        build_rank_groups(4, 1, 1, 3)
