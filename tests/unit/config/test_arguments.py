"""Parser snapshot: every flag of upstream's launch scripts with its upstream dest, default and type."""
import argparse

import pytest

from megatron.arguments import build_parser, parse_args

from tests.unit.config.rebase_scripts import SCRIPTS, script_argv

SWITCH, OFF_SWITCH = "store_true", "store_false"
# (flag, dest, default, type or switch kind), written from upstream's scripts and arguments.py.
SNAPSHOT = [
    ("--override-opt_param-scheduler", "override_opt_param_scheduler", False, SWITCH),
    ("--adam-beta1", "adam_beta1", 0.9, float),
    ("--adam-beta2", "adam_beta2", 0.999, float),
    ("--tensor-model-parallel-size", "tensor_model_parallel_size", 1, int),
    ("--init-method-std", "init_method_std", 0.02, float),
    ("--lr-decay-tokens", "lr_decay_tokens", None, int),
    ("--lr-warmup-tokens", "lr_warmup_tokens", None, int),
    ("--micro-batch-size", "micro_batch_size", None, int),
    ("--exit-duration-in-mins", "exit_duration_in_mins", None, float),  # upstream int; float takes every int
    ("--global-batch-size", "global_batch_size", None, int),
    ("--num-layers", "num_layers", None, int),
    ("--hidden-size", "hidden_size", None, int),
    ("--num-attention-heads", "num_attention_heads", None, int),
    ("--seq-length", "seq_length", None, int),
    ("--max-position-embeddings", "max_position_embeddings", None, int),
    ("--train-tokens", "train_tokens", None, int),
    ("--train-samples", "train_samples", None, int),
    ("--lr", "lr", None, float),
    ("--min-lr", "min_lr", 0.0, float),
    ("--lr-decay-style", "lr_decay_style", "linear", str),
    ("--split", "split", "969, 30, 1", str),
    ("--log-interval", "log_interval", 100, int),
    ("--eval-interval", "eval_interval", 1000, int),
    ("--eval-iters", "eval_iters", 100, int),
    ("--save-interval", "save_interval", None, int),
    ("--weight-decay", "weight_decay", 0.01, float),
    ("--clip-grad", "clip_grad", 1.0, float),
    ("--hysteresis", "hysteresis", 2, int),
    ("--num-workers", "num_workers", 2, int),
    ("--fp16", "fp16", False, SWITCH),
    ("--seed", "seed", 1234, int),
    ("--load", "load", None, str),
    ("--save", "save", None, str),
    ("--no-async-tensor-model-parallel-allreduce", "async_tensor_model_parallel_allreduce", True, OFF_SWITCH),
    ("--tensorboard-queue-size", "tensorboard_queue_size", 1000, int),
    ("--log-timers-to-tensorboard", "log_timers_to_tensorboard", False, SWITCH),
    ("--log-batch-size-to-tensorboard", "log_batch_size_to_tensorboard", False, SWITCH),
    ("--log-validation-ppl-to-tensorboard", "log_validation_ppl_to_tensorboard", False, SWITCH),
    ("--tensorboard-dir", "tensorboard_dir", None, str),
    ("--log-optimizer-states-to-tensorboard", "log_optimizer_states_to_tensorboard", False, SWITCH),
    ("--checkpoint-activations", "checkpoint_activations", False, SWITCH),
    ("--recompute-granularity", "recompute_granularity", None, str),
    ("--recompute-method", "recompute_method", None, str),
    ("--recompute-num-layers", "recompute_num_layers", 1, int),
    ("--use-rotary-position-embeddings", "use_rotary_position_embeddings", False, SWITCH),
    ("--rotary-percent", "rotary_percent", 1.0, float),
    ("--use-flash-attn", "use_flash_attn_v1", False, SWITCH),
    ("--vocab-file", "vocab_file", None, str),
    ("--merge-file", "merge_file", None, str),
    ("--data-path", "data_path", None, "nargs*"),
    ("--data-impl", "data_impl", "infer", str),
    ("--deepspeed", "deepspeed", False, SWITCH),
    ("--deepspeed_config", "deepspeed_config", None, str),
    ("--zero-stage", "zero_stage", 1.0, int),
    ("--pipeline-model-parallel-size", "pipeline_model_parallel_size", 1, int),
    ("--no-pipeline-parallel", "no_pipeline_parallel", False, SWITCH),
    ("--deepspeed-activation-checkpointing", "deepspeed_activation_checkpointing", False, SWITCH),
    ("--local_rank", "local_rank", None, int),
    ("--local-rank", "local_rank", None, int),
    # Defaults the scripts rely on without passing them.
    ("--tokenizer-type", "tokenizer_type", None, str),
    ("--make-vocab-size-divisible-by", "make_vocab_size_divisible_by", 128, int),
    ("--dataloader-type", "dataloader_type", None, str),
    ("--attention-dropout", "attention_dropout", 0.1, float),
    ("--hidden-dropout", "hidden_dropout", 0.1, float),
    ("--adam-eps", "adam_eps", 1e-8, float),
    ("--loss-scale-window", "loss_scale_window", 1000, float),
    ("--use-flash-attn-v1", "use_flash_attn_v1", False, SWITCH),
    ("--deepscale", "deepscale", False, SWITCH),
    ("--deepscale_config", "deepscale_config", None, str),
]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_snapshot_covers_the_57_compat_flags_and_the_launcher_flag():
    flags = {flag for flag, *_ in SNAPSHOT[:59]}
    assert len(flags) == 59  # 57 script flags + --local_rank and --local-rank


@pytest.mark.parametrize("flag,dest,default,kind", SNAPSHOT, ids=[row[0] for row in SNAPSHOT])
def test_flag_snapshot(parser, flag, dest, default, kind):
    action = parser._option_string_actions[flag]
    assert action.dest == dest
    assert action.default == default and type(action.default) is type(default)
    if kind == SWITCH:
        assert action.nargs == 0 and action.const is True
    elif kind == OFF_SWITCH:
        assert action.nargs == 0 and action.const is False
    elif kind == "nargs*":
        assert action.nargs == "*"
    else:
        assert action.nargs is None
        assert (action.type or str) is kind


def test_values_parse_to_their_types():
    args = parse_args(["--lr", "6e-4", "--lr-decay-tokens", "300000000000", "--zero-stage", "0",
                       "--data-path", "0.3", "a_text_document", "0.7", "b_text_document", "--local_rank=3"])
    assert args.lr == pytest.approx(6e-4) and args.lr_decay_tokens == 300_000_000_000
    assert args.zero_stage == 0 and isinstance(args.zero_stage, int)
    assert args.data_path == ["0.3", "a_text_document", "0.7", "b_text_document"]
    assert args.local_rank == 3


def test_choices_are_upstream():
    args = parse_args(["--lr-decay-style", "inverse-square-root", "--normalization", "rmsnorm",
                       "--tokenizer-type", "GPTSentencePieceTokenizer", "--data-impl", "mmap"])
    assert (args.lr_decay_style, args.normalization, args.tokenizer_type) == (
        "inverse-square-root", "rmsnorm", "GPTSentencePieceTokenizer")
    with pytest.raises(SystemExit):
        parse_args(["--lr-decay-style", "exponential"])


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_abbreviations_are_not_accepted():
    with pytest.raises(SystemExit):
        parse_args(["--num-lay", "2"])


def test_explicit_args_records_only_given_flags():
    args = parse_args(["--zero-stage", "1", "--clip-grad=1.0", "--fp16", "--local_rank=0"])
    assert args.explicit_args == frozenset({"zero_stage", "clip_grad", "fp16", "local_rank"})


def test_defaults_fill_only_unset_dests():
    args = parse_args(["--vocab-size", "100"], defaults={"tokenizer_type": "GPT2BPETokenizer", "vocab_size": 7})
    assert args.tokenizer_type == "GPT2BPETokenizer" and args.vocab_size == 100


def test_extra_args_provider_adds_flags():
    def provider(parser):
        parser.add_argument_group("extra").add_argument("--my-flag", type=int, default=5)
        return parser

    assert parse_args(["--my-flag", "9"], extra_args_provider=provider).my_flag == 9


def test_help_is_grouped_and_renders(parser):
    text = parser.format_help()
    for title in ("network size", "training", "learning rate", "checkpointing", "mixed precision",
                  "distributed", "validation", "data and dataloader", "logging", "ZeRO configurations",
                  "Activation Checkpointing", "DeepSpeed"):
        assert f"\n{title}:" in text, title
    assert "--override-opt_param-scheduler" in text and "--deepspeed_config" in text


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_rebase_script_flags_parse(name, tmp_path):
    args = parse_args(script_argv(name, tmp_path))
    assert args.tensor_model_parallel_size == SCRIPTS[name]["tp"]
    assert args.pipeline_model_parallel_size == SCRIPTS[name]["pp"]
    assert args.fp16 and args.override_opt_param_scheduler and args.local_rank == 0


def test_arguments_module_does_not_import_deepspeed_at_top():
    import sys

    from tests import processes

    code = "import sys, megatron.arguments; print('deepspeed' in sys.modules)"
    out = processes.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        timeout=120)
    assert out.stdout.strip() == "False"
