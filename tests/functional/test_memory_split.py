"""Memory per rank measured from real training runs against the estimate.

pretrain_gpt.py runs through memory_entry.py (tiny model, fp32, ZeRO-1, --no-pipeline-parallel)
at DP2 and DP4; after the first step each rank reports the bytes of its optimizer's
state tensors (Adam's moments and DeepSpeed's fp32 master partition), its parameters and the
parameter count of the built model.

1. ZeRO-1 shards the optimizer state: each rank of DPd holds 1/d of the total, the sum over
   the ranks, which is the same at DP2 and DP4 and equals 12 bytes (fp32 master + two Adam
   moments) x the parameter count the built model reports. DeepSpeed
   pads each of the 2 parameter groups' flat buffer to a multiple of 2*d elements, so the
   tolerance is 2 groups x 2d elements x 12 bytes; measured differences are within it.
2. The estimator (megatron.training.memory_estimate) gives the same per-rank figures:
   parameter count exact, optimizer state 12 bytes x ceil(n/d) within the padding above.
"""
import json
import re

import pytest

from megatron.arguments import parse_args
from megatron.config.build import build_config
from megatron.training.memory_estimate import estimate_memory
from tests.functional.launch import REPO_ROOT, run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow
ENTRY = REPO_ROOT / "tests" / "functional" / "memory_entry.py"


def _reports(output: str) -> list:
    reports = [json.loads(line) for line in re.findall(r"MEMORY_SPLIT (\{[^{}]*\})", output)]
    first = [r for r in reports if r["iteration"] == 1]
    return sorted(first, key=lambda r: r["rank"])


def _estimate(flags, world_size):
    config = build_config(parse_args(flags), world_size=world_size, accelerator_name="cpu")
    return estimate_memory(config, accelerator="cpu").worst


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("memory") / "data")


def test_zero1_optimizer_state_per_rank_is_one_over_dp(dataset):
    flags = tiny_gpt_args(dataset, train_iters=3, extra=["--no-pipeline-parallel", "--eval-iters", "0"])
    by_dp = {dp: _reports(run_pretrain(flags, num_procs=dp, script=ENTRY, timeout=240))
             for dp in (2, 4)}
    n = by_dp[2][0]["num_parameters"]
    assert n == _estimate(flags, 1).num_parameters == 134912
    total = 12 * n
    for dp in (2, 4):
        reports = by_dp[dp]
        assert len(reports) == dp
        padding = 2 * 2 * dp * 12
        estimated = _estimate(flags, dp)
        for report in reports:
            assert report["num_parameters"] == n  # ZeRO-1 keeps whole parameters
            assert report["chunked_grad_norm"]  # the CPU ZeRO optimizer's norm (no fp64 copies)
            assert abs(report["optimizer_state"] * dp - total) <= padding * dp, (dp, report)
            assert abs(report["optimizer_state"] - estimated.optimizer_state) <= padding, (dp, report)
        assert abs(sum(r["optimizer_state"] for r in reports) - total) <= padding
