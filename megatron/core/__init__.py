"""Megatron core: parallel state and tensor-parallel building blocks.

Submodules are imported on demand (`from megatron.core import parallel_state`,
`from megatron.core import tensor_parallel`), so importing this package does no work.
"""
from megatron.core.model_parallel_config import ModelParallelConfig

__all__ = ["ModelParallelConfig"]
