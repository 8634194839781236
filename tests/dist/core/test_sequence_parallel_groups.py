"""DeepSpeed-Ulysses groups on live ranks (SP2 x DP2 on 4): the getters agree with
build_rank_groups, the process groups hold those ranks, and DeepSpeed, given our mpu,
reduces over the sequence x data-parallel ranks while sizing batches by data parallelism."""
import torch
import torch.distributed as dist

from megatron.core import parallel_state as ps
from tests.harness import run_on_ranks


def _group_sum(group) -> float:
    value = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(value, group=group)
    return value.item()


def _report():
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.utils import groups

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    ps.initialize_model_parallel(1, 1, 2)
    groups.mpu = ps.get_mpu()  # what deepspeed.initialize(mpu=...) sets
    try:
        config = DeepSpeedConfig({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2},
                                 mpu=ps.get_mpu())
        return {
            "sp": (ps.get_sequence_parallel_rank(), ps.get_sequence_parallel_world_size(),
                   _group_sum(ps.get_sequence_parallel_group())),
            "dp": (ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(),
                   _group_sum(ps.get_data_parallel_group())),
            "sdp": (ps.get_sequence_data_parallel_rank(),
                    ps.get_sequence_data_parallel_world_size(),
                    _group_sum(ps.get_sequence_data_parallel_group())),
            "deepspeed": (groups._get_sequence_parallel_world_size(),
                          groups._get_sequence_data_parallel_world_size(),
                          _group_sum(groups._get_sequence_data_parallel_group()),
                          config.gradient_accumulation_steps),
        }
    finally:
        groups.mpu = None


def test_sp2_dp2_groups_and_deepspeed_view():
    reports = run_on_ranks(_report, world_size=4)
    for rank, report in enumerate(reports):
        assert report["sp"] == (rank % 2, 2, {0: 1.0, 1: 1.0, 2: 5.0, 3: 5.0}[rank])
        assert report["dp"] == (rank // 2, 2, {0: 2.0, 1: 4.0, 2: 2.0, 3: 4.0}[rank])
        assert report["sdp"] == (rank, 4, 6.0)
        # 8 = 2 (micro) x 2 (accumulation) x 2 (data parallel, not 4).
        assert report["deepspeed"] == (2, 4, 6.0, 2)
