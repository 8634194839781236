"""Activation recompute: which layers are checkpointed, and with which checkpoint function.

Three ways to ask for it, as upstream:
- legacy `--checkpoint-activations --checkpoint-num-layers N`: chunks of N layers;
- `--recompute-granularity full --recompute-method uniform|block --recompute-num-layers N`:
  uniform = chunks of N layers, block = only the first N layers of each pipeline stage;
- `--recompute-granularity selective`: only the core attention (scores, softmax, dropout,
  context) is recomputed, inside every layer.
With `--deepspeed-activation-checkpointing` the chunks go through
`deepspeed.checkpointing.checkpoint`, and the model-parallel RNG tracker becomes DeepSpeed's
(its recompute restores only its own tracker); otherwise through the tensor-parallel
`checkpoint`, which restores ours.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

from megatron.core import tensor_parallel
from megatron.model.transformer_config import TransformerConfig

CheckpointFunction = Callable[..., Any]


def full_recompute_chunk_size(config: TransformerConfig) -> int:
    """Layers per checkpointed chunk for legacy / full-uniform recompute; 0 when not chunked."""
    if config.checkpoint_activations:
        return config.checkpoint_num_layers
    if config.recompute_granularity == "full" and config.recompute_method == "uniform":
        return config.recompute_num_layers or 1
    return 0


def block_recompute_layers(config: TransformerConfig) -> int:
    """Layers checkpointed one by one at the start of each stage (full-block recompute)."""
    if config.recompute_granularity == "full" and config.recompute_method == "block":
        return config.recompute_num_layers or 1
    return 0


def layer_chunks(config: TransformerConfig, num_layers: int) -> List[Tuple[int, int, bool]]:
    """This stage's layers as (start, end, checkpointed) ranges, in order."""
    chunk = full_recompute_chunk_size(config)
    if chunk:
        return [(start, min(start + chunk, num_layers), True)
                for start in range(0, num_layers, chunk)]
    block = min(block_recompute_layers(config), num_layers)
    chunks = [(index, index + 1, True) for index in range(block)]
    if block < num_layers:
        chunks.append((block, num_layers, False))
    return chunks


def selective_recompute(config: TransformerConfig) -> bool:
    return config.recompute_granularity == "selective"


def checkpoint_function(config: TransformerConfig) -> CheckpointFunction:
    """`f(function, *args)` that recomputes `function(*args)` in backward."""
    if config.deepspeed_activation_checkpointing:
        return _deepspeed_checkpoint
    distribute = config.distribute_saved_activations

    def tensor_parallel_checkpoint(function: Callable, *args: Any) -> Any:
        return tensor_parallel.checkpoint(function, distribute, *args)

    return tensor_parallel_checkpoint


def checkpoint_when_training(config: TransformerConfig, module: torch.nn.Module,
                             function: Callable, *args: Any) -> Any:
    """`function(*args)`, recomputed in backward while `module` trains with autograd on
    (GPTModel's layer chunks, GPTModelPipe's block layers, selective core attention).
    Evaluation and no-grad runs keep no activations, so they run plainly."""
    if module.training and torch.is_grad_enabled():
        return checkpoint_function(config)(function, *args)
    return function(*args)


def _deepspeed_checkpoint(function: Callable, *args: Any) -> Any:
    """`deepspeed.checkpointing.checkpoint` given only the floating-point tensors.

    DeepSpeed's re-assembly of the arguments in backward loses its place on `None` and on
    non-floating tensors (such as a bool attention mask) when activations are partitioned;
    those need no gradient, so they are bound here instead of passed through.
    """
    import deepspeed

    positions = [i for i, arg in enumerate(args) if torch.is_tensor(arg) and arg.is_floating_point()]

    def run(*tensors: torch.Tensor) -> Any:
        full = list(args)
        for position, tensor in zip(positions, tensors):
            full[position] = tensor
        return function(*full)

    return deepspeed.checkpointing.checkpoint(run, *[args[i] for i in positions])


def configure_deepspeed_checkpointing(*, mpu, num_layers: int, partition_activations: bool,
                                      contiguous_checkpointing: bool, checkpoint_in_cpu: bool,
                                      synchronize_each_layer: bool, profile_backward: bool) -> None:
    """Configure `deepspeed.checkpointing` from the flags and make its RNG tracker ours.

    Call after the parallel groups exist and before the seeds are set (the seeding then
    initializes DeepSpeed's tracker).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if checkpoint_in_cpu and not partition_activations and get_accelerator().device_name() == "cpu":
        # Activations already live in host memory, and DeepSpeed's unpartitioned CPU copy
        # loses them when source and destination are the same device (0.19.8).
        print("> --checkpoint-in-cpu: on a CPU-only run the checkpointed activations are "
              "already in CPU memory; DeepSpeed's extra copy is skipped", flush=True)
        checkpoint_in_cpu = False
    deepspeed.checkpointing.configure(
        mpu, partition_activations=partition_activations,
        contiguous_checkpointing=contiguous_checkpointing, num_checkpoints=num_layers,
        checkpoint_in_cpu=checkpoint_in_cpu, synchronize=synchronize_each_layer,
        profile=profile_backward)
    tensor_parallel.use_deepspeed_rng_tracker()
