"""build_config: rebase scripts accepted, every cross-constraint rejected with the flags named."""
import json
import re

import pytest

from megatron.arguments import build_parser, parse_args
from megatron.config import UNSUPPORTED_FLAGS, build_config, optimizer_param_scheduler_kwargs

from tests.unit.config.rebase_scripts import SCRIPTS, script_argv, world_size

BASE = ("--num-layers 4 --hidden-size 64 --num-attention-heads 8 --seq-length 32 --max-position-embeddings 64 "
        "--micro-batch-size 2 --global-batch-size 8 --train-iters 100 --lr 1e-3 --vocab-file v.json "
        "--merge-file m.txt --deepspeed --bf16").split()


def without(flag, base=BASE):
    """BASE minus `flag` and its value."""
    index = base.index(flag)
    return base[:index] + base[index + 2:]


def build(extra=(), *, world=1, accel="cpu", ds_json=None, tmp_path=None, base=BASE):
    argv = list(base) + list(extra)
    if ds_json is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds_json))
        argv += ["--deepspeed_config", str(path)]
    return build_config(parse_args(argv), world_size=world, accelerator_name=accel)


def test_base_config_values():
    config = build(world=4, extra=["--tensor-model-parallel-size", "2"])
    assert config.parallel.data_parallel_size == 2
    assert config.batch.gradient_accumulation_steps == 2  # 8 / (2 * 2)
    assert config.model.ffn_hidden_size == 256 and config.model.kv_channels == 8
    assert config.model.num_key_value_heads == 8 and config.model.position_embedding_type == "learned_absolute"
    assert config.precision.dtype == "bf16" and str(config.precision.params_dtype) == "torch.bfloat16"
    assert config.parallel.zero_stage == 1 and config.parallel.pipeline_engine
    assert config.data.tokenizer_type == "GPT2BPETokenizer" and config.data.dataloader_type == "single"
    with pytest.raises(AttributeError):
        config.seed = 3  # frozen


def test_swiglu_ffn_default_and_gqa():
    config = build(["--swiglu", "--num-key-value-heads", "2", "--normalization", "rmsnorm"])
    assert config.model.ffn_hidden_size == 128  # int(4*64*2/3/64)*64
    assert config.model.activation == "swiglu" and config.model.num_key_value_heads == 2
    assert not config.model.bias_gelu_fusion


def test_global_batch_defaults_to_micro_times_dp():
    config = build(world=2, base=without("--global-batch-size"))
    assert config.batch.global_batch_size == 4 and config.batch.gradient_accumulation_steps == 1


def test_sample_based_train_iters_without_and_with_rampup():
    base = without("--train-iters")
    assert build(["--train-samples", "100"], base=base).schedule.train_iters == 12  # 100 // 8
    # Ramp 2 -> 8 by 2 over 30 samples: 10 samples per increment.
    # Batches: consumed 0:2, 2:2, 4:2, 6:2, 8:2, 10:4, 14:4, 18:4, 22:6, 28:6, 34(>30):8 -> 10 iterations to 34.
    config = build(["--train-samples", "98", "--rampup-batch-size", "2", "2", "30"], base=base)
    assert config.schedule.train_iters == 10 + (98 - 34) // 8
    assert config.batch.rampup_batch_size == (2, 2, 30)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_rebase_script_settings(name, tmp_path):
    args = parse_args(script_argv(name, tmp_path))
    if name == "1.3B_megatron_checkpointing":
        with pytest.raises(ValueError, match=r"without --deepspeed .*not supported yet"):
            build_config(args, world_size=world_size(name), accelerator_name="cuda")
        return
    if name.endswith("_slw"):
        with pytest.raises(ValueError, match=r'"curriculum_learning.enabled".*not supported yet'):
            build_config(args, world_size=world_size(name), accelerator_name="cuda")
        return
    config = build_config(args, world_size=world_size(name), accelerator_name="cuda")
    spec = SCRIPTS[name]
    assert (config.parallel.tensor_model_parallel_size, config.parallel.pipeline_model_parallel_size,
            config.parallel.data_parallel_size) == (spec["tp"], spec["pp"], 2)
    assert config.parallel.pipeline_engine is not spec["no_pp"]
    assert config.parallel.zero_stage == spec["zero"]
    assert config.batch.gradient_accumulation_steps == 4  # 16 / (2 * 2)
    assert config.precision.dtype == "fp16"
    assert config.precision.loss_scale_window == 500  # the JSON's value: the flag was left at its default
    assert config.precision.initial_loss_scale == 2.0 ** 11
    assert config.schedule.train_iters == 9375 // 16
    assert config.model.checkpoint_activations
    assert config.model.use_flash_attn is (name == "125M_flashattn")
    if "rope" in name:
        assert config.model.position_embedding_type == "rope" and config.model.rotary_percent == 0.25
    kwargs = optimizer_param_scheduler_kwargs(config)
    assert (kwargs["lr_warmup_tokens"], kwargs["lr_decay_tokens"], kwargs["lr_decay_steps"]) == (30000, 300000, 9375)
    assert kwargs["override_opt_param_scheduler"] and kwargs["lr_decay_style"] == "cosine"


def test_rebase_script_fp16_on_cpu_suggests_bf16(tmp_path):
    args = parse_args(script_argv("125M", tmp_path))
    with pytest.raises(ValueError, match=r"--fp16 is not available on a CPU.*--bf16"):
        build_config(args, world_size=world_size("125M"), accelerator_name="cpu")


# (extra flags, world size, accelerator, JSON or None, regex naming the flags/keys involved)
CROSS_CONSTRAINTS = [
    (["--global-batch-size", "6", "--micro-batch-size", "4"], 1, None,
     r"--global-batch-size 6 .*--micro-batch-size 4"),
    ([], 1, {"train_batch_size": 32}, r"--global-batch-size 8 disagrees with \"train_batch_size\": 32"),
    ([], 1, {"train_micro_batch_size_per_gpu": 4}, r"--micro-batch-size 2 disagrees with \"train_micro_batch_size"),
    ([], 1, {"gradient_accumulation_steps": 3}, r"\"gradient_accumulation_steps\": 3 .*--global-batch-size 8"),
    (["--zero-stage", "1"], 1, {"zero_optimization": {"stage": 0}},
     r"--zero-stage 1 disagrees with \"zero_optimization.stage\": 0"),
    ([], 1, {"fp16": {"enabled": True}}, r"\"fp16.enabled\": true .*--fp16 \(not given\)"),
    ([], 1, {"bf16": {"enabled": False}}, r"\"bf16.enabled\": false .*--bf16 \(given\)"),
    (["--clip-grad", "1.0"], 1, {"gradient_clipping": 0.5}, r"--clip-grad 1.0 disagrees with \"gradient_clipping\""),
    (["--zero-stage", "2", "--pipeline-model-parallel-size", "2"], 2, None,
     r"ZeRO stage 2 \(--zero-stage / \"zero_optimization.stage\"\).*--pipeline-model-parallel-size 2"),
    ([], 1, {"zero_optimization": {"stage": 3}}, r"ZeRO stage 3 .*pipeline engine"),
    (["--tensor-model-parallel-size", "4", "--num-attention-heads", "6", "--hidden-size", "96"], 4, None,
     r"--num-attention-heads 6 \(num_attention_heads\) must be divisible by --tensor-model-parallel-size 4"),
    (["--num-key-value-heads", "3"], 1, None, r"--num-key-value-heads 3 \(num_key_value_heads\) must divide --num-attention-heads 8"),
    (["--num-key-value-heads", "2", "--tensor-model-parallel-size", "4"], 4, None,
     r"--num-key-value-heads 2 \(num_key_value_heads\) must be divisible by --tensor-model-parallel-size 4"),
    (["--hidden-size", "60"], 1, None, r"--hidden-size 60 \(hidden_size\) must be divisible by --num-attention-heads 8"),
    (["--sequence-parallel"], 1, None, r"--sequence-parallel needs --tensor-model-parallel-size > 1"),
    (["--train-samples", "100"], 1, None, r"--train-iters and --train-samples are mutually exclusive"),
    (["--lr-decay-samples", "50"], 1, None, r"--lr-decay-samples needs sample-based training .*--train-iters"),
    (["--rampup-batch-size", "2", "2", "10"], 1, None, r"--rampup-batch-size needs sample-based training"),
    (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"], 1, None,
     r"--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive"),
    (["--lr-warmup-iters", "5", "--lr-warmup-tokens", "100"], 1, None,
     r"--lr-warmup-iters and --lr-warmup-tokens are mutually exclusive"),
    (["--lr-decay-iters", "50", "--lr-decay-tokens", "1000"], 1, None,
     r"--lr-decay-iters and --lr-decay-tokens are mutually exclusive"),
    (["--lr-warmup-iters", "100"], 1, None, r"--lr-warmup-iters 100 must be smaller than --lr-decay-iters"),
    (["--lr-warmup-tokens", "100", "--lr-decay-tokens", "100"], 1, None,
     r"--lr-warmup-tokens 100 must be smaller than --lr-decay-tokens 100"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6, None,
     r"world size 6 is not divisible by --tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2"),
    (["--no-pipeline-parallel", "--pipeline-model-parallel-size", "2"], 2, None,
     r"--no-pipeline-parallel needs --pipeline-model-parallel-size 1"),
    (["--fp16"], 1, None, r"--fp16 and --bf16 are mutually exclusive"),
    (["--min-lr", "0.1"], 1, None, r"--min-lr \(0.1\) <= --lr \(0.001\)"),
    (["--seq-length", "128"], 1, None, r"--seq-length 128 exceeds --max-position-embeddings 64"),
    (["--save", "/tmp/x"], 1, None, r"--save needs --save-interval"),
    (["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"], 1, None,
     r"--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are mutually exclusive"),
    (["--start-weight-decay", "0.1"], 1, None, r"--start-weight-decay needs --weight-decay-incr-style linear"),
    (["--weight-decay-incr-style", "linear"], 1, None, r"--start-weight-decay is required"),
    (["--weight-decay-incr-style", "cosine", "--start-weight-decay", "0.2", "--end-weight-decay", "0.1"], 1, None,
     r"--start-weight-decay \(0.2\) <= --end-weight-decay \(0.1\)"),
    (["--recompute-granularity", "full"], 1, None, r"--recompute-granularity full needs --recompute-method"),
    (["--recompute-granularity", "selective", "--recompute-method", "block"], 1, None,
     r"--recompute-method applies to --recompute-granularity full only"),
    (["--recompute-method", "uniform"], 1, None, r"--recompute-method applies to --recompute-granularity full only"),
    (["--checkpoint-activations", "--recompute-activations"], 1, None,
     r"--checkpoint-activations and --recompute-granularity"),
    (["--checkpoint-activations", "--partition-activations"], 1, None,
     r"--partition-activations need --deepspeed-activation-checkpointing"),
    (["--deepspeed-activation-checkpointing"], 1, None,
     r"--deepspeed-activation-checkpointing needs --checkpoint-activations"),
    (["--log-timers-to-tensorboard"], 1, None, r"--log-timers-to-tensorboard need --tensorboard-dir"),
    (["--tokenizer-type", "SentencePieceTokenizer"], 1, None,
     r"--tokenizer-type SentencePieceTokenizer needs --tokenizer-model"),
    (["--tokenizer-type", "BertWordPieceCase"], 1, None, r"--tokenizer-type BertWordPieceCase is not supported yet"),
    (["--data-path", "0.5", "a", "b"], 1, None, r"--data-path with several datasets takes weight/prefix pairs"),
    (["--data-path", "a", "--train-data-path", "b"], 1, None,
     r"--data-path and --train-data-path are mutually exclusive"),
    (["--split", "90,x,5"], 1, None, r"--split '90,x,5' must be comma-separated numbers"),
    ([], 1, {"curriculum_learning": {"enabled": True}}, r"\"curriculum_learning.enabled\".*not supported yet"),
    ([], 1, {"checkpoint": {"load_universal": True}}, r"\"checkpoint.load_universal\".*universal checkpoints"),
    ([], 1, {"optimizer": {"type": "Adam"}}, r"\"optimizer\" in --deepspeed_config .* is not allowed"),
    ([], 1, {"scheduler": {"type": "WarmupLR"}}, r"\"scheduler\" in --deepspeed_config .* is not allowed"),
    (["--batch-size", "4"], 1, None, r"--batch-size is no longer valid; use --micro-batch-size"),
    (["--distributed-backend", "nccl"], 1, None, r"--distributed-backend nccl does not work on the cpu accelerator"),
    (["--use-flash-attn", "--use-flash-attn-v2"], 1, None, r"give at most one of --use-flash-attn"),
    (["--rotary-percent", "0.5"], 1, None, r"--rotary-percent needs --use-rotary-position-embeddings"),
    (["--load-tag", "global_step5"], 1, None, r"--load-tag needs --load"),
]


@pytest.mark.parametrize("extra,world,ds_json,pattern", CROSS_CONSTRAINTS,
                         ids=[" ".join(c[0]) or json.dumps(c[2]) for c in CROSS_CONSTRAINTS])
def test_cross_constraint_rejected(extra, world, ds_json, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern):
        build(extra, world=world, ds_json=ds_json, tmp_path=tmp_path)


def test_constraints_on_fp16_and_fp32(tmp_path):
    fp32 = [a for a in BASE if a != "--bf16"]
    with pytest.raises(ValueError, match=r"--fp32-residual-connection needs --fp16 or --bf16"):
        build(["--fp32-residual-connection"], base=fp32)
    with pytest.raises(ValueError, match=r"--initial-loss-scale 1000.0 must be a power of 2"):
        build(["--fp16", "--initial-loss-scale", "1000"], base=fp32, accel="cuda")
    with pytest.raises(ValueError, match=r"--loss-scale 1024.0 disagrees with \"fp16.loss_scale\": 0"):
        build(["--fp16", "--loss-scale", "1024"], base=fp32, accel="cuda", tmp_path=tmp_path,
              ds_json={"fp16": {"enabled": True, "loss_scale": 0}})


@pytest.mark.parametrize("dest,flag", [("num_layers", "--num-layers"), ("lr", "--lr"),
                                       ("micro_batch_size", "--micro-batch-size"), ("seq_length", "--seq-length")])
def test_required_flags(dest, flag):
    args = parse_args(BASE)
    setattr(args, dest, None)
    with pytest.raises(ValueError, match=re.escape(flag) + r" is required"):
        build_config(args, world_size=1, accelerator_name="cpu")


def test_missing_deepspeed_json_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--deepspeed_config .*nope.json"):
        build(["--deepspeed_config", str(tmp_path / "nope.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        build(["--deepspeed_config", str(bad)])


def _non_default(default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 3
    if isinstance(default, list):
        return [4]
    if isinstance(default, str):
        return default + "-other"
    return 2


@pytest.mark.parametrize("entry", UNSUPPORTED_FLAGS, ids=[e.flag for e in UNSUPPORTED_FLAGS])
def test_unsupported_flag_rejected(entry):
    args = parse_args(BASE)
    setattr(args, entry.dest, _non_default(entry.default))
    with pytest.raises(ValueError, match=re.escape(entry.flag) + r" is not supported yet"):
        build_config(args, world_size=1, accelerator_name="cpu")


@pytest.mark.parametrize("argv,flag", [
    (["--num-experts", "4"], "--num-experts"), (["--use-distributed-optimizer"], "--use-distributed-optimizer"),
    (["--universal-checkpoint"], "--universal-checkpoint"),
    (["--num-layers-per-virtual-pipeline-stage", "2"], "--num-layers-per-virtual-pipeline-stage"),
    (["--ds-sequence-parallel-fpdt"], "--ds-sequence-parallel-fpdt")])
def test_unsupported_flags_from_the_command_line(argv, flag):
    with pytest.raises(ValueError, match=re.escape(flag) + r" is not supported yet"):
        build(argv)


def test_unsupported_table_matches_the_parser():
    parser = build_parser()
    for entry in UNSUPPORTED_FLAGS:
        action = parser._option_string_actions[entry.flag]
        assert action.dest == entry.dest, entry.flag
        assert parser.get_default(entry.dest) == entry.default, entry.flag


IMPLEMENTED = ["--checkpoint-activations", "--recompute-granularity", "--recompute-method", "--recompute-num-layers",
               "--recompute-activations", "--use-rotary-position-embeddings", "--rotary-percent", "--swiglu",
               "--num-key-value-heads", "--normalization", "--untie-embeddings-and-output-weights",
               "--disable-bias-linear", "--use-flash-attn", "--use-flash-attn-v2", "--use-flash-attn-triton",
               "--use-flash-attn-builder", "--sequence-parallel", "--exit-interval", "--exit-duration-in-mins",
               "--exit-signal-handler", "--eval-interval", "--eval-iters", "--skip-train", "--tensorboard-dir",
               "--log-timers-to-tensorboard", "--log-memory-to-tensorboard", "--tokenizer-type", "--data-path",
               "--split", "--train-data-path", "--valid-data-path", "--test-data-path", "--data-cache-path",
               "--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss", "--load", "--save",
               "--load-tag", "--no-load-optim", "--no-load-rng", "--finetune", "--no-save-optim", "--no-save-rng",
               "--deepspeed-activation-checkpointing", "--partition-activations", "--checkpoint-in-cpu",
               "--openai-gelu", "--use-cpu-initialization", "--no-position-embedding", "--log-params-norm",
               "--log-num-zeros-in-grad", "--ds-sequence-parallel-size"]


def test_implemented_features_are_not_in_the_unsupported_table():
    table = {entry.flag for entry in UNSUPPORTED_FLAGS}
    assert not table & set(IMPLEMENTED)


def test_params_norm_and_zero_count_switches():
    assert not build().logging.log_params_norm and not build().logging.log_num_zeros_in_grad
    logging = build(["--log-params-norm", "--log-num-zeros-in-grad"]).logging
    assert logging.log_params_norm and logging.log_num_zeros_in_grad
    with pytest.raises(ValueError, match=r"--log-params-norm need ZeRO stage 0, 1 or 2 .* is 3"):
        build(["--log-params-norm", "--zero-stage", "3", "--no-pipeline-parallel"])


def test_namespace_without_explicit_args_uses_parser_defaults(tmp_path):
    args = parse_args(BASE)
    del args.explicit_args
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"gradient_clipping": 0.5, "zero_optimization": {"stage": 0}}))
    args.deepspeed_config = str(path)
    config = build_config(args, world_size=1, accelerator_name="cpu")
    assert config.optimizer.clip_grad == 0.5 and config.parallel.zero_stage == 0


def test_profile_flags():
    config = build(["--profile", "pt-full", "--profile_steps", "3,5", "--profile-ranks", "0", "2",
                    "--tensorboard-dir", "tb"])
    assert (config.logging.profile, config.logging.profile_steps,
            config.logging.profile_ranks) == ("pt-full", (3, 5), (0, 2))
    assert build().logging.profile is None
    with pytest.raises(ValueError, match="--profile pt writes its traces into --tensorboard-dir"):
        build(["--profile", "pt"])
    for steps in ("3", "a,b", "4,2", "0,1"):
        with pytest.raises(ValueError, match="--profile_steps"):
            build(["--profile", "pt", "--profile_steps", steps, "--tensorboard-dir", "tb"])


def test_wandb_flags(tmp_path, monkeypatch):
    config = build(["--wandb-project", "proj", "--save", str(tmp_path), "--save-interval", "10"])
    assert config.logging.wandb and config.logging.writes_scalars
    assert config.logging.wandb_save_dir == str(tmp_path / "wandb")
    assert build(["--wandb-exp-name", "run", "--wandb-save-dir", "wb"]).logging.wandb_save_dir == "wb"
    assert not build().logging.wandb and not build().logging.writes_scalars
    # Tensorboard switches may feed wandb alone.
    assert build(["--wandb-project", "p", "--wandb-save-dir", "wb",
                  "--log-timers-to-tensorboard"]).logging.log_timers_to_tensorboard
    with pytest.raises(ValueError, match="--wandb-project needs --wandb-save-dir or --save"):
        build(["--wandb-project", "proj"])
    with pytest.raises(ValueError, match="--wandb-save-dir needs --wandb-project"):
        build(["--wandb-save-dir", "wb"])
    with pytest.raises(ValueError, match='"wandb" section of --deepspeed_config .* use one'):
        build(["--wandb-project", "p", "--wandb-save-dir", "wb"], tmp_path=tmp_path,
              ds_json={"train_batch_size": 8, "wandb": {"enabled": True, "project": "x"}})
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="--wandb-project needs the wandb package.*pip install wandb"):
        build(["--wandb-project", "p", "--wandb-save-dir", "wb"])
