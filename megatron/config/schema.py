"""Typed, frozen training configuration built once from the flags (see `build.build_config`).

Every field names the flag (or DeepSpeed JSON key) it comes from. Values are final: defaults
resolved, derived sizes computed, the DeepSpeed JSON reconciled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from megatron.model.transformer_config import TransformerConfig

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ParallelConfig:
    """Process layout. The world size is given to `build_config`, never read from the environment."""

    world_size: int
    """Number of processes (passed in)."""
    tensor_model_parallel_size: int
    """--tensor-model-parallel-size."""
    pipeline_model_parallel_size: int
    """--pipeline-model-parallel-size."""
    data_parallel_size: int
    """world_size / (TP * PP * ds_sequence_parallel_size): ranks reading different samples."""
    sequence_parallel: bool
    """--sequence-parallel (needs TP > 1)."""
    pipeline_engine: bool
    """DeepSpeed pipeline model (GPTModelPipe); False with --no-pipeline-parallel."""
    zero_stage: int
    """--zero-stage / JSON zero_optimization.stage."""
    distributed_backend: Optional[str]
    """--distributed-backend if given, else None: the accelerator's own backend."""
    distributed_timeout_minutes: int
    """--distributed-timeout-minutes."""
    local_rank: Optional[int]
    """--local-rank / --local_rank from the launcher."""
    pipeline_partition_method: str = "parameters"
    """--pipeline-partition-method for DeepSpeed's PipelineModule."""
    ds_sequence_parallel_size: int = 1
    """--ds-sequence-parallel-size: ranks splitting each sample's sequence (DeepSpeed-Ulysses)."""


@dataclass(frozen=True)
class BatchConfig:
    """Batch sizes; with ramp-up the global batch grows, see `megatron.core.num_microbatches_calculator`."""

    micro_batch_size: int
    """--micro-batch-size / JSON train_micro_batch_size_per_gpu."""
    global_batch_size: int
    """--global-batch-size / JSON train_batch_size (the final one with ramp-up)."""
    data_parallel_size: int
    """Copied from the parallel layout for convenience."""
    gradient_accumulation_steps: int
    """global / (micro * data parallel) = micro batches per step (at the final batch size)."""
    rampup_batch_size: Optional[Tuple[int, int, int]]
    """--rampup-batch-size: (start, increment, ramp-up samples)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Training length, learning-rate and weight-decay schedules, evaluation and exits."""

    train_iters: int
    """--train-iters, or derived from --train-samples (through the ramp-up if any)."""
    train_samples: Optional[int]
    """--train-samples (None for iteration-based training)."""
    train_tokens: Optional[int]
    """--train-tokens: an extra stop condition."""
    lr: float
    """--lr (peak)."""
    min_lr: float
    """--min-lr."""
    lr_decay_style: str
    """--lr-decay-style."""
    lr_decay_iters: Optional[int]
    """--lr-decay-iters (iteration-based; default train_iters)."""
    lr_decay_samples: Optional[int]
    """--lr-decay-samples (sample-based; default train_samples)."""
    lr_decay_tokens: Optional[int]
    """--lr-decay-tokens: decay by tokens instead."""
    lr_warmup_fraction: Optional[float]
    """--lr-warmup-fraction."""
    lr_warmup_iters: int
    """--lr-warmup-iters."""
    lr_warmup_samples: int
    """--lr-warmup-samples."""
    lr_warmup_tokens: Optional[int]
    """--lr-warmup-tokens."""
    start_weight_decay: float
    """--start-weight-decay (equals --weight-decay for the constant style)."""
    end_weight_decay: float
    """--end-weight-decay (equals --weight-decay for the constant style)."""
    weight_decay_incr_style: str
    """--weight-decay-incr-style."""
    override_opt_param_scheduler: bool
    """--override-opt_param-scheduler."""
    use_checkpoint_opt_param_scheduler: bool
    """--use-checkpoint-opt_param-scheduler."""
    eval_interval: int
    """--eval-interval."""
    eval_iters: int
    """--eval-iters."""
    skip_train: bool
    """--skip-train."""
    exit_interval: Optional[int]
    """--exit-interval."""
    exit_duration_in_mins: Optional[float]
    """--exit-duration-in-mins."""
    exit_signal_handler: bool
    """--exit-signal-handler."""
    max_consecutive_nonfinite_iterations: int = 10
    """--max-consecutive-nonfinite-iterations: stop after this many NaN/Inf losses in a row."""


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer hyper-parameters (the learning rate itself follows the schedule)."""

    optimizer: str
    """--optimizer: adam (AdamW semantics) or sgd."""
    lr: float
    """--lr: initial value given to the optimizer."""
    weight_decay: float
    """--weight-decay (start value with an increment schedule)."""
    adam_beta1: float
    """--adam-beta1."""
    adam_beta2: float
    """--adam-beta2."""
    adam_eps: float
    """--adam-eps."""
    sgd_momentum: float
    """--sgd-momentum."""
    clip_grad: float
    """--clip-grad / JSON gradient_clipping (0 disables)."""
    cpu_optimizer: bool = False
    """--cpu-optimizer: DeepSpeed's CPU Adam, for ZeRO-Offload (JSON
    zero_optimization.offload_optimizer.device "cpu", which it requires)."""


@dataclass(frozen=True)
class PrecisionConfig:
    """Parameter dtype and fp16 loss scaling (mirrored in the DeepSpeed config)."""

    dtype: str
    """fp32, fp16 (--fp16 / JSON fp16.enabled) or bf16 (--bf16 / JSON bf16.enabled)."""
    loss_scale: Optional[float]
    """--loss-scale / JSON fp16.loss_scale; None means dynamic."""
    initial_loss_scale: float
    """--initial-loss-scale / 2**JSON fp16.initial_scale_power."""
    min_loss_scale: float
    """--min-loss-scale / JSON fp16.min_loss_scale."""
    loss_scale_window: float
    """--loss-scale-window / JSON fp16.loss_scale_window."""
    hysteresis: int
    """--hysteresis / JSON fp16.hysteresis."""
    accumulate_allreduce_grads_in_fp32: bool
    """--accumulate-allreduce-grads-in-fp32 (JSON data_types.grad_accum_dtype)."""

    @property
    def params_dtype(self) -> torch.dtype:
        """torch dtype of the model parameters."""
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and what to save and load."""

    save: Optional[str]
    """--save."""
    save_interval: Optional[int]
    """--save-interval (required with --save)."""
    load: Optional[str]
    """--load."""
    load_tag: Optional[str]
    """--load-tag."""
    no_save_optim: bool
    """--no-save-optim."""
    no_save_rng: bool
    """--no-save-rng."""
    no_load_optim: bool
    """--no-load-optim."""
    no_load_rng: bool
    """--no-load-rng."""
    finetune: bool
    """--finetune."""
    exit_on_missing_checkpoint: bool = False
    """--exit-on-missing-checkpoint: --load finding no checkpoint is an error."""
    verify_checkpoint: bool = True
    """False with --no-verify-checkpoint: skip the checksums of the step --load reads."""


@dataclass(frozen=True)
class LoggingConfig:
    """Log lines, timers and tensorboard."""

    log_interval: int
    """--log-interval."""
    timing_log_level: int
    """--timing-log-level."""
    timing_log_option: str
    """--timing-log-option."""
    barrier_with_L1_time: bool
    """False with --no-barrier-with-level-1-timing."""
    tensorboard_dir: Optional[str]
    """--tensorboard-dir."""
    tensorboard_log_interval: int
    """--tensorboard-log-interval."""
    tensorboard_queue_size: int
    """--tensorboard-queue-size."""
    log_timers_to_tensorboard: bool
    """--log-timers-to-tensorboard."""
    log_batch_size_to_tensorboard: bool
    """--log-batch-size-to-tensorboard."""
    log_learning_rate_to_tensorboard: bool
    """False with --no-log-learnig-rate-to-tensorboard (upstream spelling)."""
    log_loss_scale_to_tensorboard: bool
    """False with --no-log-loss-scale-to-tensorboard."""
    log_validation_ppl_to_tensorboard: bool
    """--log-validation-ppl-to-tensorboard."""
    log_optimizer_states_to_tensorboard: bool
    """--log-optimizer-states-to-tensorboard."""
    log_memory_to_tensorboard: bool
    """--log-memory-to-tensorboard."""
    log_world_size_to_tensorboard: bool
    """--log-world-size-to-tensorboard."""
    peak_tflops_per_device: Optional[float] = None
    """--peak-tflops-per-device: the MFU column's denominator (no MFU without it)."""
    log_params_norm: bool = False
    """--log-params-norm: log the L2 norm of all parameters (a pass over them per iteration)."""
    log_num_zeros_in_grad: bool = False
    """--log-num-zeros-in-grad: log the number of zero gradient entries before each step."""
    profile: Optional[str] = None
    """--profile: "pt" (torch.profiler) or "pt-full" (with call stacks); None: off."""
    profile_steps: Tuple[int, int] = (2, 3)
    """--profile_steps <start>,<end>: the profiled steps, counted from 1 in this process."""
    profile_ranks: Optional[Tuple[int, ...]] = None
    """--profile-ranks: the global ranks that profile; None: all."""
    wandb_project: str = ""
    """--wandb-project; Weights & Biases logging is on when it or --wandb-exp-name is set."""
    wandb_exp_name: str = ""
    """--wandb-exp-name: the run's name in Weights & Biases."""
    wandb_save_dir: Optional[str] = None
    """--wandb-save-dir, else <--save>/wandb: where wandb keeps the run's files."""

    @property
    def wandb(self) -> bool:
        """Weights & Biases logging is on."""
        return bool(self.wandb_project or self.wandb_exp_name)

    @property
    def writes_scalars(self) -> bool:
        """Some writer (tensorboard or wandb) receives the per-iteration scalars."""
        return bool(self.tensorboard_dir) or self.wandb


@dataclass(frozen=True)
class DataConfig:
    """Datasets, tokenizer and loader."""

    data_path: Optional[Tuple[str, ...]]
    """--data-path: one prefix or weight/prefix pairs."""
    split: str
    """--split."""
    train_data_path: Optional[Tuple[str, ...]]
    """--train-data-path."""
    valid_data_path: Optional[Tuple[str, ...]]
    """--valid-data-path."""
    test_data_path: Optional[Tuple[str, ...]]
    """--test-data-path."""
    data_cache_path: Optional[str]
    """--data-cache-path."""
    data_impl: str
    """--data-impl."""
    dataloader_type: str
    """--dataloader-type (default single)."""
    num_workers: int
    """--num-workers."""
    tokenizer_type: str
    """--tokenizer-type (default GPT2BPETokenizer)."""
    vocab_file: Optional[str]
    """--vocab-file."""
    merge_file: Optional[str]
    """--merge-file."""
    tokenizer_model: Optional[str]
    """--tokenizer-model."""
    vocab_size: Optional[int]
    """--vocab-size."""
    make_vocab_size_divisible_by: int
    """--make-vocab-size-divisible-by (times TP gives the padding multiple)."""
    trust_remote_code: bool
    """--trust-remote-code."""
    seq_length: int
    """--seq-length."""
    reset_position_ids: bool
    """--reset-position-ids."""
    reset_attention_mask: bool
    """--reset-attention-mask."""
    eod_mask_loss: bool
    """--eod-mask-loss."""


@dataclass(frozen=True)
class ActivationCheckpointConfig:
    """How `deepspeed.checkpointing` is configured with --deepspeed-activation-checkpointing
    (what is recomputed is the model's: `TransformerConfig.recompute_*`)."""

    partition_activations: bool
    """--partition-activations."""
    contigious_checkpointing: bool
    """--contigious-checkpointing (upstream spelling)."""
    checkpoint_in_cpu: bool
    """--checkpoint-in-cpu."""
    synchronize_each_layer: bool
    """--synchronize-each-layer."""
    profile_backward: bool
    """--profile-backward."""


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a run needs, validated; `ds_config` is the reconciled DeepSpeed config."""

    model: TransformerConfig
    """The model; `padded_vocab_size` is None until `with_padded_vocab_size`."""
    parallel: ParallelConfig
    batch: BatchConfig
    schedule: ScheduleConfig
    optimizer: OptimizerConfig
    precision: PrecisionConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    data: DataConfig
    activation_checkpointing: ActivationCheckpointConfig
    seed: int
    """--seed."""
    accelerator_name: str
    """The accelerator the config was validated for (passed in)."""
    ds_config: Dict[str, Any] = field(default_factory=dict)
    """DeepSpeed config: the --deepspeed_config JSON merged with the flags. Copy before mutating."""

    def with_padded_vocab_size(self, padded_vocab_size: int) -> "TrainingConfig":
        """The configuration completed with the tokenizer's padded vocabulary."""
        return dataclasses.replace(self, model=self.model.with_padded_vocab_size(padded_vocab_size))
