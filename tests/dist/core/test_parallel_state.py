"""initialize_model_parallel on live ranks: every getter agrees with build_rank_groups,
the process groups really contain those ranks, and the DeepSpeed mpu object answers."""
import pytest
import torch
import torch.distributed as dist

from megatron.core import parallel_state as ps
from tests.harness import run_on_ranks


def _group_sum(group):
    value = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(value, group=group)
    return value.item()


def _report(tp, pp):
    ps.initialize_model_parallel(tp, pp)
    mpu = ps.get_mpu()
    report = {
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "tp_size": ps.get_tensor_model_parallel_world_size(),
        "tp_src": ps.get_tensor_model_parallel_src_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "pp_size": ps.get_pipeline_model_parallel_world_size(),
        "pp_first": ps.get_pipeline_model_parallel_first_rank(),
        "pp_last": ps.get_pipeline_model_parallel_last_rank(),
        "pp_next": ps.get_pipeline_model_parallel_next_rank(),
        "pp_prev": ps.get_pipeline_model_parallel_prev_rank(),
        "first": ps.is_pipeline_first_stage(), "last": ps.is_pipeline_last_stage(),
        "dp_rank": ps.get_data_parallel_rank(), "dp_size": ps.get_data_parallel_world_size(),
        "sums": {kind: _group_sum(getter()) for kind, getter in (
            ("tensor", ps.get_tensor_model_parallel_group),
            ("pipeline", ps.get_pipeline_model_parallel_group),
            ("data", ps.get_data_parallel_group),
            ("model", ps.get_model_parallel_group))},
        "embedding_sum": (_group_sum(ps.get_embedding_group())
                          if ps.is_rank_in_embedding_group() else None),
        "mpu": (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size(),
                mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(),
                mpu.get_pipe_parallel_rank(), mpu.get_pipe_parallel_world_size(),
                mpu.get_tensor_model_parallel_src_rank(), mpu.get_data_parallel_group_ranks(),
                _group_sum(mpu.get_model_parallel_group()),
                _group_sum(mpu.get_data_parallel_group()),
                hasattr(mpu, "initialize_sequence_parallel")),
        "topology_dims": (ps.get_topology().get_dim("pipe"), ps.get_topology().get_dim("data"),
                          ps.get_topology().get_dim("model")),
    }
    try:
        ps.initialize_model_parallel(tp, pp)
        report["reinit"] = "no error"
    except RuntimeError as error:
        report["reinit"] = str(error)
    ps.destroy_model_parallel()
    report["after_destroy"] = ps.model_parallel_is_initialized()
    return report


@pytest.mark.parametrize("world_size,tp,pp", [(8, 2, 2), (4, 2, 1), (4, 1, 4), (2, 1, 1)])
def test_getters_agree_with_build_rank_groups(world_size, tp, pp):
    expected = ps.build_rank_groups(world_size, tp, pp)
    reports = run_on_ranks(_report, tp, pp, world_size=world_size)
    for rank, report in enumerate(reports):
        tensor = expected.group_of("tensor", rank)
        pipeline = expected.group_of("pipeline", rank)
        data = expected.group_of("data", rank)
        model = expected.group_of("model", rank)
        stage = pipeline.index(rank)
        assert report["tp_rank"] == tensor.index(rank) and report["tp_size"] == tp
        assert report["tp_src"] == tensor[0]
        assert (report["pp_rank"], report["pp_size"]) == (stage, pp)
        assert (report["pp_first"], report["pp_last"]) == (pipeline[0], pipeline[-1])
        assert report["pp_next"] == pipeline[(stage + 1) % pp]
        assert report["pp_prev"] == pipeline[(stage - 1) % pp]
        assert report["first"] == (stage == 0) and report["last"] == (stage == pp - 1)
        assert report["dp_rank"] == data.index(rank)
        assert report["dp_size"] == world_size // (tp * pp)
        assert report["sums"] == {"tensor": sum(tensor), "pipeline": sum(pipeline),
                                  "data": sum(data), "model": sum(model)}
        if stage in (0, pp - 1):
            assert report["embedding_sum"] == sum({pipeline[0], pipeline[-1]})
        else:
            assert report["embedding_sum"] is None
        assert report["mpu"] == (tensor.index(rank), tp, data.index(rank), len(data), stage, pp,
                                 tensor[0], list(data), sum(tensor), sum(data), False)
        assert report["topology_dims"] == (pp, world_size // (tp * pp), tp)
        assert "already initialized" in report["reinit"]
        assert report["after_destroy"] is False


def _bad_sizes():
    try:
        ps.initialize_model_parallel(3, 1)
    except ValueError as error:
        return str(error)
    return "no error"


def test_bad_sizes_on_live_ranks():
    message = run_on_ranks(_bad_sizes, world_size=4)[0]
    assert "world_size=4" in message and "tensor_model_parallel_size=3" in message


def _uninitialized_getter():
    try:
        ps.get_tensor_model_parallel_rank()
    except RuntimeError as error:
        return str(error)
    return "no error"


def test_getters_before_initialization_explain():
    assert "initialize_model_parallel" in run_on_ranks(_uninitialized_getter, world_size=2)[0]


def _size_checks(tp, pp):
    ps.initialize_model_parallel(tp, pp)
    assert ps.get_tensor_model_parallel_group_if_none(None) is ps.get_tensor_model_parallel_group()
    own = ps.get_data_parallel_group()
    assert ps.get_tensor_model_parallel_group_if_none(own) is own
    ps.check_model_parallel_sizes(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    messages = []
    for sizes in ((tp * 2, pp), (tp, pp * 2), (1, 1)):
        try:
            ps.check_model_parallel_sizes(tensor_model_parallel_size=sizes[0],
                                          pipeline_model_parallel_size=sizes[1])
        except ValueError as error:
            messages.append(str(error))
    return messages


def test_model_sizes_are_checked_against_the_groups():
    tp_too_big, pp_too_big, both = run_on_ranks(_size_checks, 2, 2, world_size=4)[0]
    assert "--tensor-model-parallel-size 4 but the initialized groups have 2" in tp_too_big
    assert "pipeline" not in tp_too_big
    assert "--pipeline-model-parallel-size 4 but the initialized groups have 2" in pp_too_big
    assert "--tensor-model-parallel-size 1" in both and "--pipeline-model-parallel-size 1" in both
