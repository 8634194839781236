"""Typed training configuration: flags -> validated, frozen `TrainingConfig` (built once)."""
from megatron.config.build import build_config
from megatron.config.deepspeed_json import load_deepspeed_json, reconcile_deepspeed_config
from megatron.config.scheduler_args import optimizer_param_scheduler_kwargs
from megatron.config.schema import (ActivationCheckpointConfig, BatchConfig, CheckpointConfig, DataConfig,
                                    LoggingConfig, OptimizerConfig, ParallelConfig,
                                    PrecisionConfig, ScheduleConfig, TrainingConfig)
from megatron.config.unsupported import UNSUPPORTED_FLAGS, UnsupportedFlag, check_unsupported_flags

__all__ = [
    "ActivationCheckpointConfig", "BatchConfig", "CheckpointConfig", "DataConfig", "LoggingConfig",
    "OptimizerConfig", "ParallelConfig", "PrecisionConfig", "ScheduleConfig",
    "TrainingConfig", "UNSUPPORTED_FLAGS", "UnsupportedFlag", "build_config", "check_unsupported_flags",
    "load_deepspeed_json", "optimizer_param_scheduler_kwargs", "reconcile_deepspeed_config",
]
