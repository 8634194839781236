"""Entry point named in the design notes: the configuration lives in `megatron.config`."""
from megatron.config import TrainingConfig, build_config, optimizer_param_scheduler_kwargs

__all__ = ["TrainingConfig", "build_config", "optimizer_param_scheduler_kwargs"]
