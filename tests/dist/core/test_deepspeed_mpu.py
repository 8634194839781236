"""DeepSpeed reads the data-parallel size from our mpu object, and its gradient norm,
given that object and our parameter marks, counts every tensor-parallel shard once and
every replicated parameter once (as ZeRO's norm does)."""
import math

import torch

from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from tests.dist.core.common import chunk, randn, setup
from tests.harness import run_on_ranks


def _grad_norm(tp):
    rank = setup(tp)
    import deepspeed
    from deepspeed.runtime.utils import clip_grad_norm_

    # Wraps the harness's process group (on CPU the first call in a fresh environment
    # JIT-builds DeepSpeed's shm op once, then it is cached).
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)

    config = ModelParallelConfig(tensor_model_parallel_size=tp)
    column = ColumnParallelLinear(4, 8, config=config, init_method=torch.nn.init.zeros_,
                                  init_key="norm.fc1")
    row = RowParallelLinear(8, 4, config=config, init_method=torch.nn.init.zeros_,
                            input_is_parallel=True, init_key="norm.fc2")
    full = {"w1": randn(8, 4, seed=1), "b1": randn(8, seed=2), "w2": randn(4, 8, seed=3),
            "b2": randn(4, seed=4)}
    column.weight.grad = chunk(full["w1"], 0, rank, tp).clone()
    column.bias.grad = chunk(full["b1"], 0, rank, tp).clone()
    row.weight.grad = chunk(full["w2"], 1, rank, tp).clone()
    row.bias.grad = full["b2"].clone()  # replicated: must be counted once
    params = list(column.parameters()) + list(row.parameters())
    return clip_grad_norm_(params, max_norm=1e9, mpu=parallel_state.get_mpu()), full


def _data_parallel_config():
    setup(2)
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    config = DeepSpeedConfig({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2},
                             mpu=parallel_state.get_mpu())
    return config.gradient_accumulation_steps


def test_deepspeed_config_uses_the_data_parallel_size():
    # 2 ranks at TP=2: data-parallel size 1, so 8 = 2 (micro) x 4 (accumulation) x 1 (DP);
    # counting every rank as data parallel would give 2.
    assert run_on_ranks(_data_parallel_config, world_size=2) == [4, 4]


def test_deepspeed_grad_norm_counts_each_shard_once():
    for tp in (1, 2):
        results = run_on_ranks(_grad_norm, tp, world_size=tp)
        full = results[0][1]
        expected = math.sqrt(sum(float((g.double() ** 2).sum()) for g in full.values()))
        for norm, _ in results:
            assert abs(float(norm) - expected) < 1e-4 * expected
