"""Builders for the per-topic configs; each validates its own flags and names them in errors."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence, Tuple

from megatron.config.schema import (ActivationCheckpointConfig, CheckpointConfig, DataConfig, LoggingConfig,
                                    ModelConfig, ScheduleConfig)
from megatron.microbatches import build_num_microbatches_calculator, count_train_iters

GPT_TOKENIZERS = ("GPT2BPETokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HFTokenizer",
                  "NullTokenizer")


def _require(args: argparse.Namespace, *pairs: Tuple[str, str]) -> None:
    for dest, flag in pairs:
        if getattr(args, dest) is None:
            raise ValueError(f"{flag} is required")


def _positive(value: Optional[float], flag: str, *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{flag} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _resolve_alias(args: argparse.Namespace, dest: str, flag: str, alias_dest: str, alias_flag: str) -> Optional[int]:
    value, alias = getattr(args, dest), getattr(args, alias_dest)
    if value is not None and alias is not None and value != alias:
        raise ValueError(f"{flag} {value} and {alias_flag} {alias} disagree; give only one")
    return value if value is not None else alias


def _flash_attention(args: argparse.Namespace) -> Optional[str]:
    chosen = [name for name, dest in (("v1", "use_flash_attn_v1"), ("v2", "use_flash_attn_v2"),
                                      ("triton", "use_flash_attn_triton"), ("builder", "use_flash_attn_builder"))
              if getattr(args, dest)]
    if len(chosen) > 1:
        raise ValueError("give at most one of --use-flash-attn(-v1), --use-flash-attn-v2, "
                         f"--use-flash-attn-triton, --use-flash-attn-builder (got {', '.join(chosen)})")
    return chosen[0] if chosen else None


def _check_heads(num_heads: int, kv_heads: int, tp: int, hidden: int, kv_channels_given: bool) -> None:
    if num_heads % tp:
        raise ValueError(f"--num-attention-heads {num_heads} must be divisible by "
                         f"--tensor-model-parallel-size {tp}")
    if kv_heads <= 0 or num_heads % kv_heads:
        raise ValueError(f"--num-attention-heads {num_heads} must be a multiple of --num-key-value-heads {kv_heads}")
    if kv_heads % tp:
        raise ValueError(f"--num-key-value-heads {kv_heads} must be divisible by --tensor-model-parallel-size {tp}")
    if not kv_channels_given and hidden % num_heads:
        raise ValueError(f"--hidden-size {hidden} must be divisible by --num-attention-heads {num_heads} "
                         "(or give --kv-channels)")


def build_model_config(args: argparse.Namespace, *, tensor_model_parallel_size: int) -> ModelConfig:
    """Model shape and numerics; defaults resolved as upstream, shapes checked against TP."""
    num_layers = _resolve_alias(args, "num_layers", "--num-layers", "encoder_num_layers", "--encoder-num-layers")
    seq_length = _resolve_alias(args, "seq_length", "--seq-length", "encoder_seq_length", "--encoder-seq-length")
    if num_layers is None:
        raise ValueError("--num-layers is required")
    if seq_length is None:
        raise ValueError("--seq-length is required")
    _require(args, ("hidden_size", "--hidden-size"), ("num_attention_heads", "--num-attention-heads"),
             ("max_position_embeddings", "--max-position-embeddings"))
    for value, flag in ((num_layers, "--num-layers"), (args.hidden_size, "--hidden-size"),
                        (args.num_attention_heads, "--num-attention-heads"), (seq_length, "--seq-length"),
                        (args.make_vocab_size_divisible_by, "--make-vocab-size-divisible-by")):
        _positive(value, flag)
    tp, hidden, heads = tensor_model_parallel_size, args.hidden_size, args.num_attention_heads
    kv_heads = heads if args.num_key_value_heads is None else args.num_key_value_heads
    _check_heads(heads, kv_heads, tp, hidden, args.kv_channels is not None)
    ffn = args.ffn_hidden_size
    if ffn is None:
        ffn = int(4 * hidden * 2 / 3 / 64) * 64 if args.swiglu else 4 * hidden
    if ffn <= 0 or ffn % tp:
        raise ValueError(f"--ffn-hidden-size {ffn} must be positive and divisible by "
                         f"--tensor-model-parallel-size {tp}")
    if seq_length > args.max_position_embeddings:
        raise ValueError(f"--seq-length {seq_length} exceeds --max-position-embeddings "
                         f"{args.max_position_embeddings}")
    for value, flag in ((args.hidden_dropout, "--hidden-dropout"), (args.attention_dropout, "--attention-dropout")):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{flag} must be in [0, 1), got {value}")
    if not 0.0 < args.rotary_percent <= 1.0:
        raise ValueError(f"--rotary-percent must be in (0, 1], got {args.rotary_percent}")
    if args.use_rotary_position_embeddings and not args.add_position_embedding:
        raise ValueError("--use-rotary-position-embeddings and --no-position-embedding contradict each other")
    if args.rotary_percent != 1.0 and not args.use_rotary_position_embeddings:
        raise ValueError("--rotary-percent needs --use-rotary-position-embeddings")
    if args.openai_gelu and args.swiglu:
        raise ValueError("--openai-gelu and --swiglu are mutually exclusive")
    position = ("rope" if args.use_rotary_position_embeddings else
                "learned_absolute" if args.add_position_embedding else "none")
    return ModelConfig(
        num_layers=num_layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
        num_key_value_heads=kv_heads, kv_channels=args.kv_channels or hidden // heads,
        max_position_embeddings=args.max_position_embeddings, seq_length=seq_length,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, layernorm_epsilon=args.layernorm_epsilon,
        normalization=args.normalization, activation="swiglu" if args.swiglu else "gelu",
        openai_gelu=args.openai_gelu, add_bias_linear=args.add_bias_linear, position_embedding_type=position,
        rotary_percent=args.rotary_percent, rope_theta=args.rope_theta,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std, apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        fp32_residual_connection=args.fp32_residual_connection,
        use_cpu_initialization=bool(args.use_cpu_initialization), masked_softmax_fusion=args.masked_softmax_fusion,
        bias_gelu_fusion=args.bias_gelu_fusion and args.add_bias_linear and not args.swiglu,
        bias_dropout_fusion=args.bias_dropout_fusion, flash_attention=_flash_attention(args),
        vocab_size=args.vocab_size, pipeline_partition_method=args.pipeline_partition_method)


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
        exit_signal_handler=args.exit_signal_handler)


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
    return DataConfig(
        data_path=data_path, split=_split(args.split), train_data_path=separate["--train-data-path"],
        valid_data_path=separate["--valid-data-path"], test_data_path=separate["--test-data-path"],
        data_cache_path=args.data_cache_path, data_impl=args.data_impl,
        dataloader_type=args.dataloader_type or "single", num_workers=args.num_workers, tokenizer_type=tokenizer,
        vocab_file=args.vocab_file, merge_file=args.merge_file, tokenizer_model=args.tokenizer_model,
        vocab_size=args.vocab_size, trust_remote_code=args.trust_remote_code, seq_length=seq_length,
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
        exit_on_missing_checkpoint=args.exit_on_missing_checkpoint)


_TENSORBOARD_SWITCHES = (
    ("log_timers_to_tensorboard", "--log-timers-to-tensorboard"),
    ("log_batch_size_to_tensorboard", "--log-batch-size-to-tensorboard"),
    ("log_validation_ppl_to_tensorboard", "--log-validation-ppl-to-tensorboard"),
    ("log_optimizer_states_to_tensorboard", "--log-optimizer-states-to-tensorboard"),
    ("log_memory_to_tensorboard", "--log-memory-to-tensorboard"),
    ("log_world_size_to_tensorboard", "--log-world-size-to-tensorboard"))


def build_logging_config(args: argparse.Namespace) -> LoggingConfig:
    """Logging settings; tensorboard switches without --tensorboard-dir are an error, not a no-op."""
    _positive(args.log_interval, "--log-interval")
    _positive(args.tensorboard_log_interval, "--tensorboard-log-interval")
    if args.tensorboard_dir is None:
        given = [flag for dest, flag in _TENSORBOARD_SWITCHES if getattr(args, dest)]
        if given:
            raise ValueError(f"{', '.join(given)} need --tensorboard-dir")
    return LoggingConfig(
        log_interval=args.log_interval, timing_log_level=args.timing_log_level,
        timing_log_option=args.timing_log_option, barrier_with_L1_time=args.barrier_with_L1_time,
        tensorboard_dir=args.tensorboard_dir, tensorboard_log_interval=args.tensorboard_log_interval,
        tensorboard_queue_size=args.tensorboard_queue_size,
        log_learning_rate_to_tensorboard=args.log_learning_rate_to_tensorboard,
        log_loss_scale_to_tensorboard=args.log_loss_scale_to_tensorboard,
        **{dest: getattr(args, dest) for dest, _ in _TENSORBOARD_SWITCHES})


_DS_ACTIVATION_OPTIONS = (("partition_activations", "--partition-activations"),
                          ("contigious_checkpointing", "--contigious-checkpointing"),
                          ("checkpoint_in_cpu", "--checkpoint-in-cpu"),
                          ("synchronize_each_layer", "--synchronize-each-layer"),
                          ("profile_backward", "--profile-backward"))


def build_activation_checkpoint_config(args: argparse.Namespace, ds_options: dict) -> ActivationCheckpointConfig:
    """Recompute settings; `ds_options` are the DeepSpeed activation-checkpointing switches after the
    JSON merge. Combinations that would leave a flag without effect are errors."""
    granularity = args.recompute_granularity
    if args.recompute_activations:
        if granularity not in (None, "selective"):
            raise ValueError(f"--recompute-activations means selective recompute; it contradicts "
                             f"--recompute-granularity {granularity}")
        granularity = "selective"
    if granularity == "selective" and args.recompute_method is not None:
        raise ValueError("--recompute-method applies to --recompute-granularity full only, not selective")
    if granularity == "full" and args.recompute_method is None:
        raise ValueError("--recompute-granularity full needs --recompute-method uniform or block")
    if granularity is None and args.recompute_method is not None:
        raise ValueError("--recompute-method needs --recompute-granularity full")
    if args.checkpoint_activations and granularity is not None:
        raise ValueError("--checkpoint-activations and --recompute-granularity (or --recompute-activations) "
                         "are two activation-checkpointing mechanisms; give only one")
    _positive(args.checkpoint_num_layers, "--checkpoint-num-layers")
    _positive(args.recompute_num_layers, "--recompute-num-layers")
    if args.deepspeed_activation_checkpointing and not (args.checkpoint_activations or granularity == "full"):
        raise ValueError("--deepspeed-activation-checkpointing needs --checkpoint-activations "
                         "(or --recompute-granularity full)")
    if not args.deepspeed_activation_checkpointing:
        given = [flag for dest, flag in _DS_ACTIVATION_OPTIONS if ds_options.get(dest)]
        if given:
            raise ValueError(f"{', '.join(given)} need --deepspeed-activation-checkpointing "
                             "(they configure deepspeed.checkpointing)")
    return ActivationCheckpointConfig(
        checkpoint_activations=args.checkpoint_activations, checkpoint_num_layers=args.checkpoint_num_layers,
        recompute_granularity=granularity, recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        deepspeed_activation_checkpointing=args.deepspeed_activation_checkpointing,
        **{dest: bool(ds_options.get(dest)) for dest, _ in _DS_ACTIVATION_OPTIONS})
