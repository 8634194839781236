"""ZeRO stages and ZeRO-Offload at start-up: what is accepted, and the one-line refusals."""
import json

import pytest

from megatron.arguments import parse_args
from megatron.config import UNSUPPORTED_FLAGS, build_config

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
         "--max-position-embeddings 16 --train-iters 10 --lr 1e-3 --vocab-file v --merge-file m "
         "--deepspeed --micro-batch-size 2").split()
OFFLOAD = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}


def build(argv, *, ds_json=None, tmp_path=None, world=2):
    argv = MODEL + list(argv)
    if ds_json is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds_json))
        argv += ["--deepspeed_config", str(path)]
    return build_config(parse_args(argv), world_size=world, accelerator_name="cpu")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_need_the_zero_engine(stage):
    config = build(["--zero-stage", str(stage), "--no-pipeline-parallel"])
    assert config.parallel.zero_stage == stage and not config.parallel.pipeline_engine
    with pytest.raises(ValueError, match=rf"ZeRO stage {stage} .* does not work with DeepSpeed's pipeline engine"):
        build(["--zero-stage", str(stage)])


def test_zero3_refuses_no_save_optim():
    with pytest.raises(ValueError, match=r"^--no-save-optim does not work with ZeRO stage 3 .*zero_pp_rank_"):
        build(["--zero-stage", "3", "--no-pipeline-parallel", "--no-save-optim"])
    assert build(["--zero-stage", "2", "--no-pipeline-parallel", "--no-save-optim"]).checkpoint.no_save_optim


@pytest.mark.parametrize("stage", [1, 2])
def test_offload_with_cpu_optimizer(stage, tmp_path):
    config = build(["--zero-stage", str(stage), "--no-pipeline-parallel", "--cpu-optimizer"],
                   ds_json=OFFLOAD, tmp_path=tmp_path)
    assert config.optimizer.cpu_optimizer
    assert config.ds_config["zero_optimization"] == {"stage": stage, "offload_optimizer": {"device": "cpu"}}


def test_cpu_optimizer_is_no_longer_an_unsupported_flag():
    assert "--cpu-optimizer" not in {entry.flag for entry in UNSUPPORTED_FLAGS}
    assert not build(["--no-pipeline-parallel"]).optimizer.cpu_optimizer


@pytest.mark.parametrize("extra,ds_json,pattern", [
    (["--zero-stage", "1", "--no-pipeline-parallel"], OFFLOAD,
     r"\"zero_optimization.offload_optimizer.device\": \"cpu\" in --deepspeed_config .* needs --cpu-optimizer"),
    (["--zero-stage", "1", "--no-pipeline-parallel", "--cpu-optimizer"], None,
     r"--cpu-optimizer needs ZeRO-Offload: set \"zero_optimization\""),
    (["--zero-stage", "1", "--no-pipeline-parallel", "--cpu-optimizer"],
     {"zero_optimization": {"offload_optimizer": {"device": "none"}}}, r"--cpu-optimizer needs ZeRO-Offload"),
    (["--zero-stage", "0", "--no-pipeline-parallel", "--cpu-optimizer"], OFFLOAD,
     r"needs ZeRO stage 1 or 2 .* is 0"),
    (["--zero-stage", "3", "--no-pipeline-parallel", "--cpu-optimizer"], OFFLOAD,
     r"needs ZeRO stage 1 or 2 .* is 3\): ZeRO-3 with offload is not tested yet"),
    (["--zero-stage", "1", "--cpu-optimizer"], OFFLOAD,
     r"needs --no-pipeline-parallel: ZeRO-Offload with DeepSpeed's pipeline engine is not supported yet"),
    (["--zero-stage", "1", "--no-pipeline-parallel", "--cpu-optimizer", "--optimizer", "sgd"], OFFLOAD,
     r"--cpu-optimizer needs --optimizer adam, got --optimizer sgd"),
    (["--zero-stage", "1", "--no-pipeline-parallel", "--cpu-optimizer"],
     {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
     r"\"zero_optimization.offload_optimizer.device\": \"nvme\" .* is not supported yet"),
    (["--zero-stage", "3", "--no-pipeline-parallel"], {"zero_optimization": {"offload_param": {"device": "cpu"}}},
     r"\"zero_optimization.offload_param.device\": \"cpu\" .* ZeRO-3 parameter offload is not supported yet"),
])
def test_offload_refusals_name_the_flag_and_the_key(extra, ds_json, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern) as error:
        build(extra, ds_json=ds_json, tmp_path=tmp_path)
    assert "\n" not in str(error.value)
