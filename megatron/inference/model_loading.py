"""The model generation runs: GPTModel at the current tensor-parallel size, built from the
model flags with training-only options off, and filled from a checkpoint of any layout."""
from __future__ import annotations

import argparse
import dataclasses

import torch

from megatron.config.model import build_model_config
from megatron.conversion.checkpoint_reader import SavedCheckpoint
from megatron.core import parallel_state
from megatron.model.gpt_model import GPTModel
from megatron.model.tensor_parallel_layout import partition_of, split_full
from megatron.model.transformer_config import TransformerConfig


def inference_model_config(args: argparse.Namespace, *, padded_vocab_size: int,
                           tensor_model_parallel_size: int,
                           params_dtype: torch.dtype) -> TransformerConfig:
    """The model configuration from the flags, for generation: no dropout, no activation
    recompute, no sequence parallelism, one pipeline stage, weights not initialized (they
    come from the checkpoint). ValueError names the flag of a bad value."""
    config = build_model_config(args, tensor_model_parallel_size=tensor_model_parallel_size,
                                pipeline_model_parallel_size=1, params_dtype=params_dtype)
    return dataclasses.replace(
        config, padded_vocab_size=padded_vocab_size, hidden_dropout=0.0, attention_dropout=0.0,
        recompute_granularity=None, recompute_method=None, checkpoint_activations=False,
        deepspeed_activation_checkpointing=False, sequence_parallel=False,
        use_cpu_initialization=True, perform_initialization=False)


def checkpoint_padded_vocab_size(checkpoint: SavedCheckpoint) -> int:
    """The vocabulary rows the checkpoint's embedding holds (the padded size it trained with)."""
    padded = getattr(checkpoint.args, "padded_vocab_size", None)
    if padded:
        return int(padded)
    for name, tensor in checkpoint.tensors():
        if name.endswith("word_embeddings.weight"):
            return int(tensor.shape[0])
    raise ValueError(f"--load {checkpoint.load_dir}: checkpoint {checkpoint.tag} has no word "
                     "embeddings")


def build_inference_model(config: TransformerConfig, checkpoint: SavedCheckpoint) -> GPTModel:
    """GPTModel (gathered logits, eval mode) on this tensor-parallel rank's device, holding
    its part of every tensor of `checkpoint`, converted to the config's dtype. Raises
    ValueError when the checkpoint's tensors do not fit the model (names or shapes)."""
    from deepspeed.accelerator import get_accelerator

    model = GPTModel(config, parallel_output=False)
    parameters = dict(model.named_parameters())
    size = config.tensor_model_parallel_size
    rank = parallel_state.get_tensor_model_parallel_rank()
    swiglu = config.activation == "swiglu"
    loaded = set()
    source = f"--load {checkpoint.load_dir} ({checkpoint.tag})"
    with torch.no_grad():
        for name, full in checkpoint.tensors():
            if name not in parameters:
                raise ValueError(f"{source}: the checkpoint has {name}, which the model built "
                                 "from the flags lacks; check the model flags or pass "
                                 "--use-checkpoint-args")
            try:
                shard = split_full(full, partition_of(name, swiglu=swiglu),
                                   tensor_model_parallel_size=size)[rank]
            except ValueError as error:
                raise ValueError(f"{source}: {name}: {error}") from None
            target = parameters[name]
            if shard.shape != target.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(full.shape)} in the "
                                 f"checkpoint, the model built from the flags expects "
                                 f"{tuple(target.shape)} per rank at tensor-parallel size "
                                 f"{size}; check the model flags or pass --use-checkpoint-args")
            target.copy_(shard)
            loaded.add(name)
    missing = sorted(set(parameters) - loaded)
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                         + "; check the model flags or pass --use-checkpoint-args")
    return model.to(get_accelerator().current_device_name()).eval()
