"""Turn the parsed flags into one validated `TrainingConfig`, before any process group exists."""
from __future__ import annotations

import argparse
import os
from typing import FrozenSet, Optional, Tuple

from megatron.config.deepspeed_json import load_deepspeed_json, reconcile_deepspeed_config
from megatron.config.schema import BatchConfig, OptimizerConfig, ParallelConfig, TrainingConfig
from megatron.config.model import build_model_config
from megatron.config.sections import (build_activation_checkpoint_config, build_checkpoint_config,
                                      build_data_config, build_logging_config, build_schedule_config)
from megatron.config.unsupported import check_unsupported_flags

_REMOVED = (("batch_size", "--batch-size", "--micro-batch-size"),
            ("warmup", "--warmup", "--lr-warmup-fraction or --lr-warmup-iters/-samples/-tokens"),
            ("model_parallel_size", "--model-parallel-size", "--tensor-model-parallel-size"))
# Backends an explicit --distributed-backend may name on each accelerator.
_BACKENDS = {"cpu": ("gloo", "ccl"), "cuda": ("nccl", "gloo"), "xpu": ("ccl", "gloo"), "hpu": ("hccl",)}


def _explicit_args(args: argparse.Namespace) -> FrozenSet[str]:
    """Dests given on the command line: recorded by `parse_args`, else those differing from defaults."""
    recorded = getattr(args, "explicit_args", None)
    if recorded is not None:
        return frozenset(recorded)
    from megatron.arguments import build_parser

    parser = build_parser()
    return frozenset(dest for dest, value in vars(args).items()
                     if dest != "explicit_args" and value != parser.get_default(dest))


def _check_launch(args: argparse.Namespace) -> None:
    for dest, flag, replacement in _REMOVED:
        if getattr(args, dest, None) is not None:
            raise ValueError(f"{flag} is no longer valid; use {replacement}")
    check_unsupported_flags(args)
    if not (args.deepspeed or args.deepscale):
        raise ValueError("running without --deepspeed (Megatron's own training path) is not supported yet; "
                         "add --deepspeed, and --deepspeed_config <json> if you have one")
    if args.deepspeed_config and args.deepscale_config:
        raise ValueError("--deepspeed_config and the deprecated --deepscale_config are mutually exclusive")


def _check_ulysses(args: argparse.Namespace, world_size: int) -> int:
    """The DeepSpeed-Ulysses size, refused where it is not implemented."""
    sp, tp, pp = (args.ds_sequence_parallel_size, args.tensor_model_parallel_size,
                  args.pipeline_model_parallel_size)
    if sp < 1:
        raise ValueError(f"--ds-sequence-parallel-size must be >= 1, got {sp}")
    if sp > 1 and (tp != 1 or pp != 1 or not args.no_pipeline_parallel):
        engine = "--no-pipeline-parallel" if args.no_pipeline_parallel else "the pipeline engine"
        raise ValueError(f"--ds-sequence-parallel-size {sp} needs --no-pipeline-parallel, "
                         f"--tensor-model-parallel-size 1 and --pipeline-model-parallel-size 1 "
                         f"(got {engine}, --tensor-model-parallel-size {tp}, "
                         f"--pipeline-model-parallel-size {pp}): DeepSpeed-Ulysses is implemented "
                         "only for the ZeRO engine without tensor or pipeline parallelism (the "
                         "pipeline engine does not split sequences; heads split by tensor "
                         "parallelism are untested with the all-to-all)")
    if world_size % sp:
        raise ValueError(f"world size {world_size} is not divisible by "
                         f"--ds-sequence-parallel-size {sp}")
    return sp


def _check_writable_folder(path: str, flag: str) -> None:
    """`path` is, or can be created as, a folder this process may write (checked without
    creating anything): a run must not train for hours before its first save fails."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {probe} is not writable")


def _parallel_sizes(args: argparse.Namespace, world_size: int) -> Tuple[int, int, int]:
    """(TP, PP, DP): DP counts the ranks reading different samples, so it leaves out the
    DeepSpeed-Ulysses ranks that share them."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world_size < 1:
        raise ValueError(f"world size must be positive, got {world_size}")
    for value, flag in ((tp, "--tensor-model-parallel-size"), (pp, "--pipeline-model-parallel-size")):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if world_size % (tp * pp):
        raise ValueError(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} "
                         f"x --pipeline-model-parallel-size {pp}")
    if args.no_pipeline_parallel and pp != 1:
        raise ValueError(f"--no-pipeline-parallel needs --pipeline-model-parallel-size 1, got {pp}")
    if args.sequence_parallel and tp == 1:
        raise ValueError("--sequence-parallel needs --tensor-model-parallel-size > 1")
    return tp, pp, world_size // (tp * pp * _check_ulysses(args, world_size))


def _backend(args: argparse.Namespace, explicit: FrozenSet[str], accelerator_name: str) -> Optional[str]:
    if "distributed_backend" not in explicit:
        return None
    allowed = _BACKENDS.get(accelerator_name)
    if allowed is not None and args.distributed_backend not in allowed:
        raise ValueError(f"--distributed-backend {args.distributed_backend} does not work on the "
                         f"{accelerator_name} accelerator; use one of {', '.join(allowed)} or drop the flag")
    return args.distributed_backend


def _rampup(args: argparse.Namespace) -> Optional[Tuple[int, int, int]]:
    if args.rampup_batch_size is None:
        return None
    values = args.rampup_batch_size
    try:
        start, increment, samples = (int(float(v)) for v in values)
    except (TypeError, ValueError):
        raise ValueError("--rampup-batch-size takes 3 integers: <start> <increment> <ramp-up samples>; "
                         f"got {values}") from None
    return start, increment, samples


def _optimizer_config(args: argparse.Namespace, clip_grad: float) -> OptimizerConfig:
    for value, flag in ((args.adam_beta1, "--adam-beta1"), (args.adam_beta2, "--adam-beta2")):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{flag} must be in [0, 1), got {value}")
    if args.adam_eps <= 0:
        raise ValueError(f"--adam-eps must be positive, got {args.adam_eps}")
    if clip_grad < 0:
        raise ValueError(f"--clip-grad (\"gradient_clipping\") must be >= 0, got {clip_grad}")
    return OptimizerConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                           adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
                           sgd_momentum=args.sgd_momentum, clip_grad=clip_grad,
                           cpu_optimizer=args.cpu_optimizer)


def build_config(args: argparse.Namespace, *, world_size: int, accelerator_name: str) -> TrainingConfig:
    """Validate every flag and cross-constraint once and return the frozen configuration.

    `world_size` is the number of processes the run will have; `accelerator_name` is
    `get_accelerator().device_name()` ("cpu", "cuda", ...). Nothing is created: no process
    group, no file. Errors are ValueError (FileNotFoundError for a missing JSON) naming the
    flags and JSON keys involved.
    """
    explicit = _explicit_args(args)
    _check_launch(args)
    if args.save:
        _check_writable_folder(args.save, "--save")
    if args.load and os.path.exists(args.load) and not os.path.isdir(args.load):
        raise ValueError(f"--load {args.load}: a file, not a checkpoint folder")
    tp, pp, dp = _parallel_sizes(args, world_size)
    config_path = args.deepspeed_config or args.deepscale_config
    flag = "--deepspeed_config" if args.deepspeed_config else "--deepscale_config"
    json_config = load_deepspeed_json(config_path, flag) if config_path else {}
    merged = reconcile_deepspeed_config(json_config, args, explicit=explicit, data_parallel_size=dp,
                                        source=f"{flag} {config_path}" if config_path else "the DeepSpeed config")
    precision = merged.precision
    if precision.dtype == "fp16" and accelerator_name == "cpu":
        raise ValueError("--fp16 is not available on a CPU: fp16 with loss scaling is for GPUs (DeepSpeed "
                         "accepts it on a CPU only where oneDNN has fp16 kernels); use --bf16 (or fp32) and "
                         "set \"fp16.enabled\" to false")
    if merged.zero_stage >= 2 and not args.no_pipeline_parallel:
        raise ValueError(f"ZeRO stage {merged.zero_stage} (--zero-stage / \"zero_optimization.stage\") does not "
                         f"work with DeepSpeed's pipeline engine (--pipeline-model-parallel-size {pp}); use ZeRO "
                         "stage 0 or 1, or --no-pipeline-parallel with --pipeline-model-parallel-size 1")
    if merged.zero_stage >= 3 and (args.log_params_norm or args.log_num_zeros_in_grad):
        given = [flag for flag, on in (("--log-params-norm", args.log_params_norm),
                                       ("--log-num-zeros-in-grad", args.log_num_zeros_in_grad)) if on]
        raise ValueError(f"{', '.join(given)} need ZeRO stage 0, 1 or 2 (--zero-stage / "
                         f"\"zero_optimization.stage\" is {merged.zero_stage}): ZeRO-3 partitions the "
                         "parameters themselves, which these counts do not read yet")
    if merged.zero_stage >= 3 and args.no_save_optim:
        raise ValueError("--no-save-optim does not work with ZeRO stage 3 (--zero-stage / "
                         "\"zero_optimization.stage\"): the weights are saved only inside the ZeRO "
                         "shard files (zero_pp_rank_*_optim_states.pt) that it leaves out")
    rampup = _rampup(args)
    model = build_model_config(args, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                               params_dtype=precision.params_dtype)
    schedule = build_schedule_config(args, global_batch_size=merged.global_batch_size,
                                     micro_batch_size=merged.micro_batch_size, data_parallel_size=dp,
                                     rampup=rampup)
    if model.fp32_residual_connection and precision.dtype == "fp32":
        raise ValueError("--fp32-residual-connection needs --fp16 or --bf16")
    if precision.dtype == "fp16" and precision.loss_scale is not None and precision.loss_scale <= 0:
        raise ValueError(f"--loss-scale must be positive, got {precision.loss_scale}")
    parallel = ParallelConfig(
        world_size=world_size, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        data_parallel_size=dp, sequence_parallel=args.sequence_parallel,
        pipeline_engine=not args.no_pipeline_parallel, zero_stage=merged.zero_stage,
        distributed_backend=_backend(args, explicit, accelerator_name),
        distributed_timeout_minutes=args.distributed_timeout_minutes, local_rank=args.local_rank,
        pipeline_partition_method=args.pipeline_partition_method,
        ds_sequence_parallel_size=args.ds_sequence_parallel_size)
    batch = BatchConfig(micro_batch_size=merged.micro_batch_size, global_batch_size=merged.global_batch_size,
                        data_parallel_size=dp, gradient_accumulation_steps=merged.gradient_accumulation_steps,
                        rampup_batch_size=rampup)
    logging = build_logging_config(args)
    if logging.wandb and (json_config.get("wandb") or {}).get("enabled"):
        raise ValueError(f"--wandb-project/--wandb-exp-name and the \"wandb\" section of {flag} "
                         f"{config_path} would both start Weights & Biases runs; use one (the "
                         "flags send upstream's scalars from the last rank, DeepSpeed's section "
                         "its own Train/Samples scalars from rank 0)")
    return TrainingConfig(
        model=model, parallel=parallel, batch=batch, schedule=schedule,
        optimizer=_optimizer_config(args, merged.clip_grad), precision=precision,
        checkpoint=build_checkpoint_config(args), logging=logging,
        data=build_data_config(args, seq_length=model.seq_length),
        activation_checkpointing=build_activation_checkpoint_config(args, merged.activation_checkpointing),
        seed=args.seed, accelerator_name=accelerator_name, ds_config=merged.config)
