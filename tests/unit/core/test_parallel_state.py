"""Golden tests of the pure rank-group function (no processes)."""
import itertools

import pytest

from megatron.core.parallel_state import build_rank_groups


def test_golden_8_ranks_tp2_pp2_dp2():
    # DeepSpeed order (pipe, data, model): rank = pipe * 4 + data * 2 + tp.
    groups = build_rank_groups(8, 2, 2)
    assert groups.data_parallel_size == 2
    assert groups.tensor == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert groups.pipeline == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert groups.data == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert groups.model == ((0, 1, 4, 5), (2, 3, 6, 7))
    assert groups.embedding == ((0, 4), (1, 5), (2, 6), (3, 7))


def test_golden_16_ranks_tp2_pp4_dp2():
    # Megatron's documented 16-GPU example sizes, written out in DeepSpeed's order:
    # rank = pipe * 4 + data * 2 + tp.
    groups = build_rank_groups(16, 2, 4)
    assert groups.tensor == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13),
                             (14, 15))
    assert groups.pipeline == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert groups.data == ((0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 14),
                           (13, 15))
    assert groups.model == ((0, 1, 4, 5, 8, 9, 12, 13), (2, 3, 6, 7, 10, 11, 14, 15))
    assert groups.embedding == ((0, 12), (1, 13), (2, 14), (3, 15))


def test_golden_12_ranks_tp3_pp2_dp2():
    # rank = pipe * 6 + data * 3 + tp.
    groups = build_rank_groups(12, 3, 2)
    assert groups.tensor == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    assert groups.pipeline == ((0, 6), (1, 7), (2, 8), (3, 9), (4, 10), (5, 11))
    assert groups.data == ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11))
    assert groups.model == ((0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11))


def test_golden_degenerate_layouts():
    pure_data = build_rank_groups(4, 1, 1)
    assert pure_data.tensor == ((0,), (1,), (2,), (3,))
    assert pure_data.pipeline == ((0,), (1,), (2,), (3,))
    assert pure_data.data == ((0, 1, 2, 3),)
    assert pure_data.model == ((0,), (1,), (2,), (3,))
    assert pure_data.embedding == ((0,), (1,), (2,), (3,))
    pure_tensor = build_rank_groups(4, 4, 1)
    assert pure_tensor.tensor == ((0, 1, 2, 3),)
    assert pure_tensor.data == ((0,), (1,), (2,), (3,))
    pure_pipe = build_rank_groups(8, 1, 8)
    assert pure_pipe.pipeline == (tuple(range(8)),)
    assert pure_pipe.embedding == ((0, 7),)


def _expected_by_formula(world_size, tp, pp):
    """Groups from the (pipe, data, model) row-major definition, independent of DeepSpeed."""
    dp = world_size // (tp * pp)

    def rank(p, d, t):
        return p * dp * tp + d * tp + t

    return {
        "tensor": {tuple(rank(p, d, t) for t in range(tp)) for p in range(pp) for d in range(dp)},
        "pipeline": {tuple(rank(p, d, t) for p in range(pp)) for d in range(dp) for t in range(tp)},
        "data": {tuple(rank(p, d, t) for d in range(dp)) for p in range(pp) for t in range(tp)},
        "model": {tuple(sorted(rank(p, d, t) for p in range(pp) for t in range(tp)))
                  for d in range(dp)},
    }


LAYOUTS = [(world, tp, pp) for world in (8, 16, 32) for tp in (1, 2, 4, 8) for pp in (1, 2, 4)
           if world % (tp * pp) == 0]


@pytest.mark.parametrize("world_size,tp,pp", LAYOUTS)
def test_groups_match_definition_and_deepspeed_topology(world_size, tp, pp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    groups = build_rank_groups(world_size, tp, pp)
    expected = _expected_by_formula(world_size, tp, pp)
    for kind, lists in expected.items():
        assert set(getattr(groups, kind)) == lists, kind
        assert len(getattr(groups, kind)) == len(lists), kind
    # A separately built DeepSpeed topology agrees rank by rank: TP peers differ only in
    # the model coordinate, in order; pipeline peers only in the stage.
    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=world_size // (tp * pp))
    for rank in range(world_size):
        coord = topology.get_coord(rank)
        tensor_group = groups.group_of("tensor", rank)
        assert tensor_group.index(rank) == coord.model
        assert tensor_group == tuple(topology.get_rank(pipe=coord.pipe, data=coord.data, model=m)
                                     for m in range(tp))
        pipe_group = groups.group_of("pipeline", rank)
        assert pipe_group == tuple(topology.get_rank(pipe=p, data=coord.data, model=coord.model)
                                   for p in range(pp))
        assert groups.group_of("data", rank).index(rank) == coord.data
        # DeepSpeed's PipelineParallelGrid builds its model group from the data index.
        assert groups.group_of("model", rank) == tuple(
            sorted(topology.get_axis_list(axis="data", idx=coord.data)))
        embedding = (pipe_group[0], pipe_group[-1]) if pp > 1 else (rank,)
        if rank in (pipe_group[0], pipe_group[-1]):
            assert groups.group_of("embedding", rank) == embedding
        else:
            with pytest.raises(ValueError, match="no embedding group"):
                groups.group_of("embedding", rank)
    assert groups.topology.get_dim("pipe") == pp
    assert groups.topology.get_dim("model") == tp
    # every rank appears in exactly one group of each kind
    for kind in ("tensor", "pipeline", "data", "model"):
        members = list(itertools.chain.from_iterable(getattr(groups, kind)))
        assert sorted(members) == list(range(world_size)), kind


@pytest.mark.parametrize("world_size,tp,pp,message", [
    (6, 4, 1, "world_size=6, tensor_model_parallel_size=4, pipeline_model_parallel_size=1"),
    (8, 3, 1, "tensor_model_parallel_size=3"),
    (8, 2, 3, "pipeline_model_parallel_size=3"),
    (8, 0, 1, "tensor_model_parallel_size=0"),
    (8, 1, 0, "pipeline_model_parallel_size=0"),
    (8, -2, 1, "tensor_model_parallel_size=-2"),
    (0, 1, 1, "world_size=0"),
])
def test_bad_sizes_raise_value_error_naming_them(world_size, tp, pp, message):
    with pytest.raises(ValueError, match=message):
        build_rank_groups(world_size, tp, pp)


def test_group_of_unknown_rank():
    with pytest.raises(ValueError, match="rank 9"):
        build_rank_groups(8, 2, 2).group_of("tensor", 9)
