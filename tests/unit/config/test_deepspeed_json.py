"""The DeepSpeed config after merging the JSON with the flags (expected dicts written by hand)."""
import json

import pytest

from megatron.arguments import parse_args
from megatron.config import build_config

from tests.unit.config.rebase_scripts import SCRIPTS, script_argv, world_size

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 16 "
         "--train-iters 10 --lr 1e-3 --vocab-file v --merge-file m --deepspeed").split()


def merged(argv, ds_json, tmp_path, *, world=1, accel="cpu"):
    if ds_json is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds_json))
        argv = argv + ["--deepspeed_config", str(path)]
    return build_config(parse_args(MODEL + argv), world_size=world, accelerator_name=accel)


@pytest.mark.parametrize("name", [n for n in sorted(SCRIPTS) if n not in ("1.3B_megatron_checkpointing",
                                                                           "1.3B_rope_slw")])
def test_rebase_script_ds_config(name, tmp_path):
    config = build_config(parse_args(script_argv(name, tmp_path)), world_size=world_size(name),
                          accelerator_name="cuda")
    zero = SCRIPTS[name]["zero"]
    expected = {
        "train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 10,
        "zero_optimization": {"stage": zero}, "gradient_clipping": 1.0, "prescale_gradients": zero == 0,
        "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                 "min_loss_scale": 1, "initial_scale_power": 11},
        "wall_clock_breakdown": False,
        "gradient_accumulation_steps": 4,  # filled: 16 / (2 x data-parallel 2)
    }
    assert config.ds_config == expected


def test_flags_fill_an_empty_config_fp16(tmp_path):
    config = merged("--micro-batch-size 2 --global-batch-size 8 --fp16 --zero-stage 0 --clip-grad 0.5 "
                    "--initial-loss-scale 65536 --hysteresis 3 --log-interval 7".split(), None, tmp_path,
                    world=2, accel="cuda")
    assert config.ds_config == {
        "train_micro_batch_size_per_gpu": 2, "train_batch_size": 8, "gradient_accumulation_steps": 2,
        "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "min_loss_scale": 1.0,
                 "loss_scale_window": 1000, "hysteresis": 3},
        "gradient_clipping": 0.5, "zero_optimization": {"stage": 0}, "steps_per_print": 7}


def test_flags_fill_what_the_json_leaves_out_bf16(tmp_path):
    config = merged("--micro-batch-size 1 --bf16 --zero-stage 1 --accumulate-allreduce-grads-in-fp32".split(),
                    {"zero_optimization": {"reduce_bucket_size": 1000}, "wall_clock_breakdown": True}, tmp_path,
                    world=4)
    assert config.ds_config == {
        "zero_optimization": {"reduce_bucket_size": 1000, "stage": 1}, "wall_clock_breakdown": True,
        "train_micro_batch_size_per_gpu": 1, "train_batch_size": 4, "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True, "check_grad_overflow": False},  # NonFiniteStepGuard checks
        "data_types": {"grad_accum_dtype": "fp32"}, "gradient_clipping": 1.0, "steps_per_print": 100}


@pytest.mark.parametrize("section", ["bf16", "bfloat16"])
def test_a_json_s_bf16_overflow_check_is_kept(section, tmp_path):
    flags = ["--bf16", "--micro-batch-size", "1"]
    config = merged(flags, {section: {"enabled": True, "check_grad_overflow": True}}, tmp_path)
    assert config.ds_config[section] == {"enabled": True, "check_grad_overflow": True}
    config = merged(flags, {section: {"enabled": True}}, tmp_path)
    assert config.ds_config[section] == {"enabled": True, "check_grad_overflow": False}
    fp32 = merged(["--micro-batch-size", "1"], None, tmp_path).ds_config
    assert "bf16" not in fp32 and "bfloat16" not in fp32


def test_json_values_apply_where_flags_were_left_at_default(tmp_path):
    config = merged(["--bf16"], {"train_batch_size": 12, "train_micro_batch_size_per_gpu": 3,
                                 "gradient_clipping": 0.3, "zero_optimization": {"stage": 0}}, tmp_path, world=2)
    assert (config.batch.micro_batch_size, config.batch.global_batch_size) == (3, 12)
    assert config.batch.gradient_accumulation_steps == 2
    assert config.optimizer.clip_grad == 0.3 and config.parallel.zero_stage == 0


def test_json_fp16_scaling_values_win_over_flag_defaults(tmp_path):
    config = merged(["--fp16", "--micro-batch-size", "1"],
                    {"fp16": {"enabled": True, "loss_scale": 128, "initial_scale_power": 12,
                              "loss_scale_window": 250, "min_loss_scale": 0.5, "hysteresis": 4}},
                    tmp_path, accel="cuda")
    precision = config.precision
    assert (precision.loss_scale, precision.initial_loss_scale, precision.loss_scale_window,
            precision.min_loss_scale, precision.hysteresis) == (128.0, 4096.0, 250.0, 0.5, 4)


def test_auto_values_are_filled(tmp_path):
    config = merged("--micro-batch-size 2 --global-batch-size 4 --bf16".split(),
                    {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                     "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}, tmp_path)
    assert config.ds_config["train_batch_size"] == 4 and config.ds_config["train_micro_batch_size_per_gpu"] == 2
    assert config.ds_config["gradient_clipping"] == 1.0
    assert config.ds_config["bf16"] == {"enabled": True, "check_grad_overflow": False}


def test_micro_batch_only_from_json_and_gas_from_json(tmp_path):
    config = merged(["--bf16"], {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3},
                    tmp_path, world=2)
    assert config.batch.global_batch_size == 12 and config.ds_config["train_batch_size"] == 12


def test_zero_flags_are_merged(tmp_path):
    argv = ("--micro-batch-size 1 --zero-stage 2 --no-pipeline-parallel --zero-reduce-scatter "
            "--zero-contigious-gradients --zero-reduce-bucket-size 500 --zero-allgather-bucket-size 600").split()
    assert merged(argv, None, tmp_path).ds_config["zero_optimization"] == {
        "stage": 2, "reduce_scatter": True, "contiguous_gradients": True, "reduce_bucket_size": 500,
        "allgather_bucket_size": 600}
    with pytest.raises(ValueError, match=r"--zero-reduce-scatter True disagrees with "
                                         r"\"zero_optimization.reduce_scatter\": false"):
        merged(argv, {"zero_optimization": {"reduce_scatter": False}}, tmp_path)


def test_sgd_with_zero_allows_the_untested_optimizer(tmp_path):
    config = merged("--micro-batch-size 1 --optimizer sgd --zero-stage 1".split(), None, tmp_path)
    assert config.ds_config["zero_allow_untested_optimizer"] is True
    config = merged("--micro-batch-size 1 --zero-stage 1".split(), None, tmp_path)
    assert "zero_allow_untested_optimizer" not in config.ds_config


def test_activation_checkpointing_section_reconciled(tmp_path):
    argv = "--micro-batch-size 1 --checkpoint-activations --deepspeed-activation-checkpointing".split()
    config = merged(argv, {"activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": False}},
                    tmp_path)
    assert config.activation_checkpointing.partition_activations
    assert not config.activation_checkpointing.checkpoint_in_cpu
    config = merged(argv + ["--checkpoint-in-cpu"], None, tmp_path)
    assert config.ds_config["activation_checkpointing"] == {"cpu_checkpointing": True}
    with pytest.raises(ValueError, match=r"--checkpoint-in-cpu True disagrees with "
                                         r"\"activation_checkpointing.cpu_checkpointing\": false"):
        merged(argv + ["--checkpoint-in-cpu"], {"activation_checkpointing": {"cpu_checkpointing": False}}, tmp_path)


def test_input_json_is_not_modified(tmp_path):
    path = tmp_path / "ds.json"
    original = {"train_batch_size": 4}
    path.write_text(json.dumps(original))
    config = merged(["--micro-batch-size", "2", "--deepspeed_config", str(path)], None, tmp_path, world=2)
    assert json.loads(path.read_text()) == original and config.ds_config["gradient_accumulation_steps"] == 1


def test_sequence_parallel_pipeline_sends_whole_activations():
    """DeepSpeed's pipeline splits stage-to-stage tensors across TP ranks unless told not to,
    which is wrong when each TP rank holds a different sequence chunk."""
    from megatron.arguments import parse_args
    from megatron.config.build import build_config

    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "1",
            "--global-batch-size", "2", "--train-iters", "10", "--lr", "1e-3",
            "--tensor-model-parallel-size", "2", "--deepspeed", "--sequence-parallel",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"]
    piped = build_config(parse_args(base + ["--pipeline-model-parallel-size", "2"]),
                         world_size=4, accelerator_name="cpu").ds_config
    assert piped["pipeline"] == {"pipe_partitioned": False, "grad_partitioned": False}
    flat = build_config(parse_args(base + ["--no-pipeline-parallel"]), world_size=2,
                        accelerator_name="cpu").ds_config
    assert "pipeline" not in flat
