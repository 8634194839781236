"""Builders for the per-topic configs; each validates its own flags and names them in errors."""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Optional, Sequence, Tuple

from megatron.config.schema import (ActivationCheckpointConfig, CheckpointConfig, DataConfig, LoggingConfig,
                                    ScheduleConfig)
from megatron.core.num_microbatches_calculator import build_num_microbatches_calculator, count_train_iters

GPT_TOKENIZERS = ("GPT2BPETokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HFTokenizer",
                  "NullTokenizer")


def _require(args: argparse.Namespace, *pairs: Tuple[str, str]) -> None:
    for dest, flag in pairs:
        if getattr(args, dest) is None:
            raise ValueError(f"{flag} is required")


def _positive(value: Optional[float], flag: str, *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{flag} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _check_exclusive(pairs: Sequence[Tuple[str, str]], given: Sequence[bool]) -> None:
    named = [flag for (_, flag), is_given in zip(pairs, given) if is_given]
    if len(named) > 1:
        raise ValueError(f"{' and '.join(named)} are mutually exclusive; give only one")


def _lr_units(args: argparse.Namespace) -> None:
    if args.train_iters is not None and args.train_samples is not None:
        raise ValueError("--train-iters and --train-samples are mutually exclusive; give only one")
    if args.train_iters is None and args.train_samples is None:
        raise ValueError("give --train-iters or --train-samples")
    if args.train_iters is not None:
        for dest, flag, unset in (("lr_decay_samples", "--lr-decay-samples", None),
                                  ("lr_warmup_samples", "--lr-warmup-samples", 0),
                                  ("rampup_batch_size", "--rampup-batch-size", None)):
            if getattr(args, dest) != unset:
                raise ValueError(f"{flag} needs sample-based training (--train-samples), not --train-iters")
    else:
        for dest, flag, unset in (("lr_decay_iters", "--lr-decay-iters", None),
                                  ("lr_warmup_iters", "--lr-warmup-iters", 0)):
            if getattr(args, dest) != unset:
                raise ValueError(f"{flag} needs iteration-based training (--train-iters), not --train-samples")
    warmups = (("lr_warmup_fraction", "--lr-warmup-fraction"), ("lr_warmup_iters", "--lr-warmup-iters"),
               ("lr_warmup_samples", "--lr-warmup-samples"), ("lr_warmup_tokens", "--lr-warmup-tokens"))
    _check_exclusive(warmups, [getattr(args, d) not in (None, 0) for d, _ in warmups])
    decays = (("lr_decay_iters", "--lr-decay-iters"), ("lr_decay_samples", "--lr-decay-samples"),
              ("lr_decay_tokens", "--lr-decay-tokens"))
    _check_exclusive(decays, [getattr(args, d) is not None for d, _ in decays])


def _weight_decay(args: argparse.Namespace) -> Tuple[float, float]:
    if args.weight_decay_incr_style == "constant":
        for dest, flag in (("start_weight_decay", "--start-weight-decay"), ("end_weight_decay", "--end-weight-decay")):
            if getattr(args, dest) is not None:
                raise ValueError(f"{flag} needs --weight-decay-incr-style linear or cosine (it is constant, "
                                 "which uses --weight-decay)")
        _positive(args.weight_decay, "--weight-decay", allow_zero=True)
        return args.weight_decay, args.weight_decay
    _require(args, ("start_weight_decay", "--start-weight-decay"), ("end_weight_decay", "--end-weight-decay"))
    if not 0.0 <= args.start_weight_decay <= args.end_weight_decay:
        raise ValueError(f"need 0 <= --start-weight-decay ({args.start_weight_decay}) <= --end-weight-decay "
                         f"({args.end_weight_decay})")
    return args.start_weight_decay, args.end_weight_decay


def build_schedule_config(args: argparse.Namespace, *, global_batch_size: int, micro_batch_size: int,
                          data_parallel_size: int,
                          rampup: Optional[Tuple[int, int, int]]) -> ScheduleConfig:
    """Training length and LR/WD schedules; unit mix-ups are errors naming both flags."""
    _lr_units(args)
    _require(args, ("lr", "--lr"))
    if not 0.0 <= args.min_lr <= args.lr:
        raise ValueError(f"need 0 <= --min-lr ({args.min_lr}) <= --lr ({args.lr})")
    for value, flag in ((args.train_iters, "--train-iters"), (args.train_samples, "--train-samples"),
                        (args.train_tokens, "--train-tokens"), (args.lr_decay_iters, "--lr-decay-iters"),
                        (args.lr_decay_samples, "--lr-decay-samples"), (args.lr_decay_tokens, "--lr-decay-tokens"),
                        (args.eval_interval, "--eval-interval"), (args.exit_interval, "--exit-interval"),
                        (args.exit_duration_in_mins, "--exit-duration-in-mins")):
        _positive(value, flag)
    if args.max_consecutive_nonfinite_iterations < 1:
        raise ValueError("--max-consecutive-nonfinite-iterations must be >= 1, got "
                         f"{args.max_consecutive_nonfinite_iterations}")
    for value, flag in ((args.lr_warmup_iters, "--lr-warmup-iters"), (args.lr_warmup_samples, "--lr-warmup-samples"),
                        (args.lr_warmup_tokens, "--lr-warmup-tokens"), (args.eval_iters, "--eval-iters")):
        _positive(value, flag, allow_zero=True)
    if args.lr_warmup_fraction is not None and not 0.0 <= args.lr_warmup_fraction < 1.0:
        raise ValueError(f"--lr-warmup-fraction must be in [0, 1), got {args.lr_warmup_fraction}")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ValueError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are "
                         "mutually exclusive")
    if args.train_iters is not None:
        train_iters = args.train_iters
        decay, warmup = args.lr_decay_iters or train_iters, args.lr_warmup_iters
        decay_flag, warmup_flag = "--lr-decay-iters (default --train-iters)", "--lr-warmup-iters"
    else:
        calculator = build_num_microbatches_calculator(
            global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
            data_parallel_size=data_parallel_size, rampup_batch_size=rampup)
        train_iters = count_train_iters(calculator, args.train_samples, rampup[2] if rampup else None)
        decay, warmup = args.lr_decay_samples or args.train_samples, args.lr_warmup_samples
        decay_flag, warmup_flag = "--lr-decay-samples (default --train-samples)", "--lr-warmup-samples"
    if args.lr_decay_tokens is None and warmup >= decay:
        raise ValueError(f"{warmup_flag} {warmup} must be smaller than {decay_flag} {decay}")
    if (args.lr_decay_tokens is not None and args.lr_warmup_tokens is not None
            and args.lr_warmup_tokens >= args.lr_decay_tokens):
        raise ValueError(f"--lr-warmup-tokens {args.lr_warmup_tokens} must be smaller than --lr-decay-tokens "
                         f"{args.lr_decay_tokens}")
    start_wd, end_wd = _weight_decay(args)
    return ScheduleConfig(
        train_iters=train_iters, train_samples=args.train_samples, train_tokens=args.train_tokens, lr=args.lr,
        min_lr=args.min_lr, lr_decay_style=args.lr_decay_style, lr_decay_iters=args.lr_decay_iters,
        lr_decay_samples=args.lr_decay_samples, lr_decay_tokens=args.lr_decay_tokens,
        lr_warmup_fraction=args.lr_warmup_fraction, lr_warmup_iters=args.lr_warmup_iters,
        lr_warmup_samples=args.lr_warmup_samples, lr_warmup_tokens=args.lr_warmup_tokens,
        start_weight_decay=start_wd, end_weight_decay=end_wd, weight_decay_incr_style=args.weight_decay_incr_style,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, skip_train=args.skip_train,
        exit_interval=args.exit_interval, exit_duration_in_mins=args.exit_duration_in_mins,
        exit_signal_handler=args.exit_signal_handler,
        max_consecutive_nonfinite_iterations=args.max_consecutive_nonfinite_iterations)


def _split(value: str) -> str:
    parts = [p.strip() for p in value.replace("/", ",").split(",")]
    try:
        numbers = [float(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"--split {value!r} must be comma-separated numbers, e.g. 949,50,1") from None
    if not 1 <= len(numbers) <= 3 or any(n < 0 for n in numbers) or sum(numbers) <= 0:
        raise ValueError(f"--split {value!r} needs 1 to 3 non-negative proportions with a positive sum")
    return value


def _data_paths(paths: Optional[Sequence[str]], flag: str) -> Optional[Tuple[str, ...]]:
    if paths is None:
        return None
    if not paths:
        raise ValueError(f"{flag} needs at least one path")
    if len(paths) > 1:
        if len(paths) % 2:
            raise ValueError(f"{flag} with several datasets takes weight/prefix pairs; got {len(paths)} values")
        for weight in paths[0::2]:
            try:
                if float(weight) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{flag}: {weight!r} is not a non-negative weight (expected weight/prefix pairs)")\
                    from None
    return tuple(paths)


def build_data_config(args: argparse.Namespace, *, seq_length: int) -> DataConfig:
    """Data sources and tokenizer; the tokenizer's required files are checked by flag."""
    data_path = _data_paths(args.data_path, "--data-path")
    separate = {flag: _data_paths(getattr(args, dest), flag) for dest, flag in (
        ("train_data_path", "--train-data-path"), ("valid_data_path", "--valid-data-path"),
        ("test_data_path", "--test-data-path"))}
    given = [flag for flag, value in separate.items() if value is not None]
    if data_path is not None and given:
        raise ValueError(f"--data-path and {', '.join(given)} are mutually exclusive")
    tokenizer = args.tokenizer_type or "GPT2BPETokenizer"
    if tokenizer not in GPT_TOKENIZERS:
        raise ValueError(f"--tokenizer-type {tokenizer} is not supported yet (GPT pretraining supports "
                         f"{', '.join(GPT_TOKENIZERS)})")
    needs = {"GPT2BPETokenizer": (("vocab_file", "--vocab-file"), ("merge_file", "--merge-file")),
             "SentencePieceTokenizer": (("tokenizer_model", "--tokenizer-model"),),
             "GPTSentencePieceTokenizer": (("tokenizer_model", "--tokenizer-model"),),
             "HFTokenizer": (("tokenizer_model", "--tokenizer-model"),),
             "NullTokenizer": (("vocab_size", "--vocab-size"),)}[tokenizer]
    for dest, flag in needs:
        if getattr(args, dest) is None:
            raise ValueError(f"--tokenizer-type {tokenizer} needs {flag}")
    _positive(args.num_workers, "--num-workers", allow_zero=True)
    _positive(args.make_vocab_size_divisible_by, "--make-vocab-size-divisible-by")
    return DataConfig(
        data_path=data_path, split=_split(args.split), train_data_path=separate["--train-data-path"],
        valid_data_path=separate["--valid-data-path"], test_data_path=separate["--test-data-path"],
        data_cache_path=args.data_cache_path, data_impl=args.data_impl,
        dataloader_type=args.dataloader_type or "single", num_workers=args.num_workers, tokenizer_type=tokenizer,
        vocab_file=args.vocab_file, merge_file=args.merge_file, tokenizer_model=args.tokenizer_model,
        vocab_size=args.vocab_size, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        trust_remote_code=args.trust_remote_code, seq_length=seq_length,
        reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss)


def build_checkpoint_config(args: argparse.Namespace) -> CheckpointConfig:
    """Save/load settings; --save needs --save-interval as upstream."""
    if args.save is not None and args.save_interval is None:
        raise ValueError("--save needs --save-interval")
    _positive(args.save_interval, "--save-interval")
    if args.load_tag is not None and args.load is None:
        raise ValueError("--load-tag needs --load")
    if args.exit_on_missing_checkpoint and args.load is None:
        raise ValueError("--exit-on-missing-checkpoint needs --load")
    return CheckpointConfig(
        save=args.save, save_interval=args.save_interval, load=args.load, load_tag=args.load_tag,
        no_save_optim=bool(args.no_save_optim), no_save_rng=bool(args.no_save_rng),
        no_load_optim=bool(args.no_load_optim), no_load_rng=bool(args.no_load_rng), finetune=args.finetune,
        exit_on_missing_checkpoint=args.exit_on_missing_checkpoint,
        verify_checkpoint=args.verify_checkpoint)


_TENSORBOARD_SWITCHES = (
    ("log_timers_to_tensorboard", "--log-timers-to-tensorboard"),
    ("log_batch_size_to_tensorboard", "--log-batch-size-to-tensorboard"),
    ("log_validation_ppl_to_tensorboard", "--log-validation-ppl-to-tensorboard"),
    ("log_optimizer_states_to_tensorboard", "--log-optimizer-states-to-tensorboard"),
    ("log_memory_to_tensorboard", "--log-memory-to-tensorboard"),
    ("log_world_size_to_tensorboard", "--log-world-size-to-tensorboard"))


def _profile_steps(args: argparse.Namespace) -> Tuple[int, int]:
    try:
        start, end = (int(part) for part in str(args.profile_steps).split(","))
    except ValueError:
        raise ValueError(f"--profile_steps must be <start>,<end> (e.g. 2,3), got "
                         f"{args.profile_steps!r}") from None
    if not 1 <= start <= end:
        raise ValueError(f"--profile_steps {args.profile_steps}: need 1 <= start <= end")
    return start, end


def _wandb_save_dir(args: argparse.Namespace) -> Optional[str]:
    """Where wandb keeps the run (upstream: --wandb-save-dir, else <--save>/wandb); None when
    wandb is off. The package must be importable when it is on."""
    if not (args.wandb_project or args.wandb_exp_name):
        if args.wandb_save_dir:
            raise ValueError("--wandb-save-dir needs --wandb-project (or --wandb-exp-name)")
        return None
    flag = "--wandb-project" if args.wandb_project else "--wandb-exp-name"
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"{flag} needs the wandb package, which is not installed "
                         "(pip install wandb)")
    if args.wandb_save_dir:
        return args.wandb_save_dir
    if args.save:
        return os.path.join(args.save, "wandb")
    raise ValueError(f"{flag} needs --wandb-save-dir or --save (wandb keeps the run in "
                     "<--save>/wandb)")


def build_logging_config(args: argparse.Namespace) -> LoggingConfig:
    """Logging settings; tensorboard switches without a writer (--tensorboard-dir or
    --wandb-project) are an error, not a no-op."""
    _positive(args.log_interval, "--log-interval")
    _positive(args.peak_tflops_per_device, "--peak-tflops-per-device")
    _positive(args.tensorboard_log_interval, "--tensorboard-log-interval")
    if args.profile is not None and args.tensorboard_dir is None:
        raise ValueError(f"--profile {args.profile} writes its traces into --tensorboard-dir; "
                         "give --tensorboard-dir")
    wandb_save_dir = _wandb_save_dir(args)
    if args.tensorboard_dir is None and wandb_save_dir is None:
        given = [flag for dest, flag in _TENSORBOARD_SWITCHES if getattr(args, dest)]
        if given:
            raise ValueError(f"{', '.join(given)} need --tensorboard-dir (or --wandb-project)")
    return LoggingConfig(
        log_interval=args.log_interval, timing_log_level=args.timing_log_level,
        timing_log_option=args.timing_log_option, barrier_with_L1_time=args.barrier_with_L1_time,
        tensorboard_dir=args.tensorboard_dir, tensorboard_log_interval=args.tensorboard_log_interval,
        tensorboard_queue_size=args.tensorboard_queue_size,
        log_learning_rate_to_tensorboard=args.log_learning_rate_to_tensorboard,
        log_loss_scale_to_tensorboard=args.log_loss_scale_to_tensorboard,
        peak_tflops_per_device=args.peak_tflops_per_device,
        log_params_norm=args.log_params_norm, log_num_zeros_in_grad=args.log_num_zeros_in_grad,
        profile=args.profile, profile_steps=_profile_steps(args),
        profile_ranks=tuple(args.profile_ranks) if args.profile_ranks is not None else None,
        wandb_project=args.wandb_project, wandb_exp_name=args.wandb_exp_name,
        wandb_save_dir=wandb_save_dir,
        **{dest: getattr(args, dest) for dest, _ in _TENSORBOARD_SWITCHES})


_DS_ACTIVATION_OPTIONS = (("partition_activations", "--partition-activations"),
                          ("contigious_checkpointing", "--contigious-checkpointing"),
                          ("checkpoint_in_cpu", "--checkpoint-in-cpu"),
                          ("synchronize_each_layer", "--synchronize-each-layer"),
                          ("profile_backward", "--profile-backward"))


def build_activation_checkpoint_config(args: argparse.Namespace, ds_options: dict) -> ActivationCheckpointConfig:
    """`deepspeed.checkpointing` options (after the JSON merge); without
    --deepspeed-activation-checkpointing they would do nothing, so giving one is an error.
    What is recomputed is validated with the model (`megatron.config.model`)."""
    if not args.deepspeed_activation_checkpointing:
        given = [flag for dest, flag in _DS_ACTIVATION_OPTIONS if ds_options.get(dest)]
        if given:
            raise ValueError(f"{', '.join(given)} need --deepspeed-activation-checkpointing "
                             "(they configure deepspeed.checkpointing)")
    return ActivationCheckpointConfig(**{dest: bool(ds_options.get(dest)) for dest, _ in _DS_ACTIVATION_OPTIONS})
