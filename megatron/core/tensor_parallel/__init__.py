"""Tensor-parallel layers, communication mappings, loss, RNG and data helpers."""
from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.core.tensor_parallel.data import broadcast_data
from megatron.core.tensor_parallel.initialization import derive_seed, layout_independent_init
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    allreduce_sequence_parallel_gradients,
    copy_tensor_model_parallel_attributes,
    linear_with_grad_accumulation_and_async_allreduce,
    param_is_not_tensor_parallel_duplicate,
    register_sequence_parallel_gradient_hooks,
    set_defaults_if_not_set_tensor_model_parallel_attributes,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.random import (
    checkpoint,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
    use_deepspeed_rng_tracker,
    use_own_rng_tracker,
)
from megatron.core.tensor_parallel.utils import (
    VocabUtility,
    divide,
    ensure_divisibility,
    split_tensor_along_last_dim,
)

__all__ = [
    "vocab_parallel_cross_entropy", "broadcast_data", "derive_seed", "layout_independent_init",
    "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
    "allreduce_sequence_parallel_gradients", "copy_tensor_model_parallel_attributes",
    "linear_with_grad_accumulation_and_async_allreduce", "param_is_not_tensor_parallel_duplicate",
    "register_sequence_parallel_gradient_hooks",
    "set_defaults_if_not_set_tensor_model_parallel_attributes",
    "set_tensor_model_parallel_attributes", "copy_to_tensor_model_parallel_region",
    "gather_from_sequence_parallel_region", "gather_from_tensor_model_parallel_region",
    "reduce_from_tensor_model_parallel_region", "reduce_scatter_to_sequence_parallel_region",
    "scatter_to_sequence_parallel_region", "scatter_to_tensor_model_parallel_region",
    "checkpoint", "get_cuda_rng_tracker", "model_parallel_cuda_manual_seed", "VocabUtility",
    "use_deepspeed_rng_tracker", "use_own_rng_tracker",
    "divide", "ensure_divisibility", "split_tensor_along_last_dim",
]
