"""From parsed flags to a model ready to generate: process groups, the checkpoint (any layout),
`--use-checkpoint-args`, the tokenizer and the tensor-parallel model."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from megatron.config.unsupported import check_unsupported_flags
from megatron.conversion.checkpoint_reader import SavedCheckpoint, open_checkpoint
from megatron.inference.checkpoint_args import apply_checkpoint_args
from megatron.inference.model_loading import (build_inference_model, checkpoint_padded_vocab_size,
                                              inference_model_config)
from megatron.model.gpt_model import GPTModel
from megatron.model.transformer_config import TransformerConfig
from megatron.tokenizer import build_tokenizer

# Flags of the generation tools that the training table refuses.
_HANDLED_HERE = {"use_checkpoint_args": False, "inference": False}


@dataclass
class GenerationSetup:
    """Everything generation needs, the same on every tensor-parallel rank."""

    args: argparse.Namespace
    """The flags, with the checkpoint's model flags under --use-checkpoint-args."""
    checkpoint: SavedCheckpoint
    config: TransformerConfig
    tokenizer: object
    model: GPTModel

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (the end-of-document id included)."""
        return max(self.tokenizer.vocab_size, self.tokenizer.eod + 1)

    @property
    def max_length(self) -> int:
        """The longest sequence (prompt plus generated tokens): the position table's rows
        with learned positions, else the training sequence length."""
        if self.config.position_embedding_type == "learned_absolute":
            return self.config.max_position_embeddings
        return self.config.seq_length


def _params_dtype(args: argparse.Namespace) -> torch.dtype:
    if args.fp16 and args.bf16:
        raise ValueError("give at most one of --fp16 and --bf16")
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


def setup_generation(args: argparse.Namespace) -> GenerationSetup:
    """Start the process groups (every rank is one tensor-parallel rank of one model), open
    `--load`, build the tokenizer and the model. Raises ValueError (CheckpointError is one)
    with one line naming the flag or file."""
    from megatron.initialize import initialize_distributed, set_random_seeds

    check_unsupported_flags(argparse.Namespace(**{**vars(args), **_HANDLED_HERE}))
    if args.load is None:
        raise ValueError("--load is required: the checkpoint to generate from")
    params_dtype = _params_dtype(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    tensor_parallel = args.tensor_model_parallel_size
    if world_size != tensor_parallel:
        raise ValueError(f"generation runs one model over all ranks: the world size "
                         f"({world_size}) must equal --tensor-model-parallel-size "
                         f"({tensor_parallel})")
    if args.pipeline_model_parallel_size != 1:
        raise ValueError(f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}: "
                         "generation runs without pipeline stages (a checkpoint written with "
                         "stages is read whole); leave the flag at 1")
    checkpoint = open_checkpoint(args.load, load_tag=args.load_tag,
                                 verify_checksums=args.verify_checkpoint)
    if args.use_checkpoint_args:
        args = apply_checkpoint_args(args, checkpoint.args, explicit=args.explicit_args,
                                     source=f"--load {args.load}")
    initialize_distributed(tensor_model_parallel_size=tensor_parallel,
                           pipeline_model_parallel_size=1,
                           timeout_minutes=args.distributed_timeout_minutes)
    set_random_seeds(args.seed)
    tokenizer = build_tokenizer(
        args.tokenizer_type, vocab_file=args.vocab_file, merge_file=args.merge_file,
        tokenizer_model=args.tokenizer_model, vocab_size=args.vocab_size,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        tensor_model_parallel_size=tensor_parallel, trust_remote_code=args.trust_remote_code)
    padded_vocab_size = checkpoint_padded_vocab_size(checkpoint)
    if max(tokenizer.vocab_size, tokenizer.eod + 1) > padded_vocab_size:
        raise ValueError(f"--tokenizer-type {args.tokenizer_type} has {tokenizer.vocab_size} "
                         f"tokens but the checkpoint's embedding only {padded_vocab_size} rows; "
                         "is it the tokenizer the model was trained with?")
    config = inference_model_config(args, padded_vocab_size=padded_vocab_size,
                                    tensor_model_parallel_size=tensor_parallel,
                                    params_dtype=params_dtype)
    model = build_inference_model(config, checkpoint)
    return GenerationSetup(args=args, checkpoint=checkpoint, config=config, tokenizer=tokenizer,
                           model=model)


def finish_generation() -> None:
    """Leave together: a rank that exits while another still tears down its connections can
    make gloo abort the other one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
