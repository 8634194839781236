"""The precision flags in the DeepSpeed config: fp16 loss scaling (checked without running fp16,
which needs a GPU) and bf16 with fp32 gradient accumulation. Complements test_deepspeed_json.py,
which covers the defaults filled into an empty config and the JSON winning over defaults.

fp16 configs are built for the "cuda" accelerator: the CPU refusal of --fp16 is this project's
own rule (tested in test_build_config.py) and nothing here depends on what DeepSpeed does there.
"""
import json

import pytest

from megatron.arguments import parse_args
from megatron.config import build_config

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
         "--max-position-embeddings 16 --train-iters 10 --lr 1e-3 --vocab-file v --merge-file m "
         "--deepspeed --micro-batch-size 2").split()
_FP16_FLAGS = ("--loss-scale 4096 --initial-loss-scale 1024 --min-loss-scale 2 --loss-scale-window 250 "
               "--hysteresis 5").split()


def build(argv, *, ds_json=None, tmp_path=None, accel="cuda", world=1):
    argv = MODEL + list(argv)
    if ds_json is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds_json))
        argv += ["--deepspeed_config", str(path)]
    return build_config(parse_args(argv), world_size=world, accelerator_name=accel)


def test_every_loss_scale_flag_reaches_the_fp16_section():
    config = build(["--fp16", *_FP16_FLAGS])
    # DeepSpeed's names: a non-zero loss_scale is static, initial_scale_power is log2.
    assert config.ds_config["fp16"] == {"enabled": True, "loss_scale": 4096.0, "initial_scale_power": 10,
                                        "min_loss_scale": 2.0, "loss_scale_window": 250,
                                        "hysteresis": 5}
    precision = config.precision
    assert (precision.dtype, precision.loss_scale, precision.initial_loss_scale, precision.min_loss_scale,
            precision.loss_scale_window, precision.hysteresis) == ("fp16", 4096.0, 1024.0, 2.0, 250.0, 5)


def test_dynamic_loss_scaling_is_loss_scale_zero():
    config = build(["--fp16", "--initial-loss-scale", "65536"])
    assert config.ds_config["fp16"]["loss_scale"] == 0 and config.precision.loss_scale is None
    assert config.ds_config["fp16"]["initial_scale_power"] == 16


@pytest.mark.parametrize("precision_flag", [[], ["--bf16"]])
def test_loss_scale_flags_leave_bf16_and_fp32_configs_alone(precision_flag):
    config = build([*precision_flag, *_FP16_FLAGS], accel="cpu")
    assert "fp16" not in config.ds_config


@pytest.mark.parametrize("flag,value,key,json_value", [
    ("--loss-scale", "8", "loss_scale", 16),
    ("--initial-loss-scale", "256", "initial_scale_power", 9),
    ("--min-loss-scale", "4", "min_loss_scale", 1),
    ("--loss-scale-window", "100", "loss_scale_window", 1000),
    ("--hysteresis", "3", "hysteresis", 2),
])
def test_each_loss_scale_flag_disagreeing_with_the_json_names_both(flag, value, key, json_value, tmp_path):
    with pytest.raises(ValueError, match=rf"{flag} .* disagrees with \"fp16\.{key}\": {json_value} in "
                                         r"--deepspeed_config"):
        build(["--fp16", flag, value], ds_json={"fp16": {"enabled": True, key: json_value}},
              tmp_path=tmp_path)


def test_equal_flag_and_json_values_are_accepted(tmp_path):
    config = build(["--fp16", "--loss-scale-window", "250", "--initial-loss-scale", "2048"], tmp_path=tmp_path,
                   ds_json={"fp16": {"enabled": True, "loss_scale_window": 250, "initial_scale_power": 11}})
    assert config.precision.loss_scale_window == 250 and config.precision.initial_loss_scale == 2048


def test_non_positive_static_loss_scale_is_refused():
    with pytest.raises(ValueError, match=r"--loss-scale must be positive, got -4.0"):
        build(["--fp16", "--loss-scale", "-4"])


def test_bf16_fp32_gradient_accumulation_reaches_data_types(tmp_path):
    config = build(["--bf16", "--accumulate-allreduce-grads-in-fp32", "--zero-stage", "1"], accel="cpu")
    assert config.ds_config["data_types"] == {"grad_accum_dtype": "fp32"}
    assert config.precision.accumulate_allreduce_grads_in_fp32
    # The JSON may say it instead of the flag; a JSON asking for bf16 contradicts the flag.
    config = build(["--bf16"], accel="cpu", tmp_path=tmp_path,
                   ds_json={"data_types": {"grad_accum_dtype": "fp32"}})
    assert config.ds_config["data_types"] == {"grad_accum_dtype": "fp32"}
    with pytest.raises(ValueError, match=r"--accumulate-allreduce-grads-in-fp32 True disagrees with "
                                         r"\"data_types.grad_accum_dtype\": \"bf16\""):
        build(["--bf16", "--accumulate-allreduce-grads-in-fp32"], accel="cpu", tmp_path=tmp_path,
              ds_json={"data_types": {"grad_accum_dtype": "bf16"}})


def test_fp32_gradient_accumulation_is_a_no_op_in_fp32_and_refused_with_fp16():
    assert "data_types" not in build(["--accumulate-allreduce-grads-in-fp32"], accel="cpu").ds_config
    with pytest.raises(ValueError, match=r"--accumulate-allreduce-grads-in-fp32 with --fp16 is not supported"):
        build(["--fp16", "--accumulate-allreduce-grads-in-fp32"])


def test_bf16_fp32_gradient_accumulation_needs_zero(tmp_path):
    # DeepSpeed raises NotImplementedError for bf16 weights with fp32 gradients without ZeRO.
    with pytest.raises(ValueError, match=r"--accumulate-allreduce-grads-in-fp32 .* with --bf16 needs ZeRO "
                                         r"stage 1, 2 or 3 .* is 0"):
        build(["--bf16", "--accumulate-allreduce-grads-in-fp32", "--zero-stage", "0"], accel="cpu")
    with pytest.raises(ValueError, match=r"needs ZeRO stage 1, 2 or 3"):
        build(["--bf16", "--zero-stage", "0"], accel="cpu", tmp_path=tmp_path,
              ds_json={"data_types": {"grad_accum_dtype": "fp32"}})
