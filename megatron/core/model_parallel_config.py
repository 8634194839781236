"""Typed configuration shared by the tensor-parallel layers (Megatron-Core's ModelParallelConfig)."""
from dataclasses import dataclass

import torch


@dataclass
class ModelParallelConfig:
    """How layers are split across ranks and how their parameters are created.

    Built once from the command-line flags and passed to every layer (never read from a
    global argument bag).
    """

    tensor_model_parallel_size: int = 1
    """Ranks that split each layer's weights (`--tensor-model-parallel-size`)."""

    pipeline_model_parallel_size: int = 1
    """Pipeline stages (`--pipeline-model-parallel-size`)."""

    sequence_parallel: bool = False
    """Split activations outside the tensor-parallel regions along the sequence dimension
    (`--sequence-parallel`); needs tensor_model_parallel_size > 1."""

    use_cpu_initialization: bool = False
    """Initialize each full weight on CPU, then keep this rank's slice, so every layout gets
    the same model (`--use-cpu-initialization`). Layers given an `init_key` (the GPT
    model's) draw from a generator seeded by (init_seed, that name); layers without one
    draw from the default CPU generator, as upstream."""

    perform_initialization: bool = True
    """Run the init methods; switched off when the weights are loaded from a checkpoint
    anyway. Without it weights start at zero."""

    params_dtype: torch.dtype = torch.float32
    """Parameter dtype (`--fp16`/`--bf16` pick half types)."""

    init_seed: int = 1234
    """Seed for the layout-independent initialization (`--seed`)."""

    async_tensor_model_parallel_allreduce: bool = False
    """Overlap the input-gradient all-reduce of ColumnParallelLinear with its weight-gradient
    computation (`--no-async-tensor-model-parallel-allreduce` turns it off)."""

    gradient_accumulation_fusion: bool = False
    """Megatron's fused weight-gradient accumulation into `main_grad` buffers
    (`--no-gradient-accumulation-fusion`); not supported here because DeepSpeed owns the
    gradient buffers."""

    def __post_init__(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.sequence_parallel and self.tensor_model_parallel_size <= 1:
            raise ValueError(
                "sequence_parallel (--sequence-parallel) needs tensor_model_parallel_size > 1, "
                f"got tensor_model_parallel_size={self.tensor_model_parallel_size}")
        if self.gradient_accumulation_fusion:
            raise ValueError(
                "gradient_accumulation_fusion=True is not supported: DeepSpeed manages the "
                "gradient buffers; pass --no-gradient-accumulation-fusion")
        if not isinstance(self.params_dtype, torch.dtype) or not self.params_dtype.is_floating_point:
            raise ValueError(f"params_dtype must be a floating torch.dtype, got {self.params_dtype!r}")
        if not isinstance(self.init_seed, int) or isinstance(self.init_seed, bool):
            raise ValueError(f"init_seed (--seed) must be an integer, got {self.init_seed!r}")
