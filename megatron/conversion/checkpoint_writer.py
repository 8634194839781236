"""Write one full model (GPTModel names, tensor-parallel size 1) as a checkpoint of a chosen
TP x PP layout that `pretrain_gpt.py --load DIR --finetune` (or `--no-load-optim`) loads:
the inverse of `checkpoint_reader`.

Files (docs/formats.md, 3B-3C): the pipeline engine's `layer_NN-model_TT-model_states.pt`
plus one `mp_rank_XX_model_states.pt` per rank (XX = stage * TP + tp_rank, `module` None), or
the ZeRO engine's `mp_rank_XX_model_states.pt` holding each tensor-parallel rank's `module`;
the client state (`args`, `iteration`, `checkpoint_version`, `train_state`,
`model_fingerprint`), no optimizer or RNG files; the manifest, trackers and commit order of
`commit_checkpoint`. Everything goes into a staging folder beside the target,
renamed into place at the end: a failure leaves nothing behind.

Memory: the pipeline engine's files are written layer by layer (one layer's shards at a
time); the ZeRO engine keeps a whole tensor-parallel rank in one file, so it holds 1/TP of the
model and reads the source TP times.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import asdict
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from megatron.checkpointing import CHECKPOINT_VERSION, ModelFingerprint, commit_checkpoint
from megatron.checkpointing.errors import CheckpointError
from megatron.checkpointing.integrity import shared_checksums
from megatron.checkpointing.layout import STAGING_SUFFIX, tag_of_iteration
from megatron.checkpointing.safe_load import plain_args
from megatron.model.tensor_parallel_layout import partition_of, split_full

TensorSource = Callable[[], Iterator[Tuple[str, torch.Tensor]]]
_EMBEDDING = "language_model.embedding."
_LAYER = "language_model.encoder.layers."
_FINAL_NORM = "language_model.encoder.final_layernorm."
_OUTPUT = "language_model.output_layer.weight"


def check_output_dir(path: str, *, force: bool, flag: str) -> None:
    """Refuse (one line) an existing non-empty output folder unless `force`."""
    if os.path.exists(path) and not force:
        if not os.path.isdir(path) or os.listdir(path):
            raise CheckpointError(f"{flag} {path} already exists; pass --force to replace it")


class StagingFolder:
    """A folder beside `target` that becomes `target` on `commit()` and vanishes on error."""

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        parent = os.path.dirname(self.target)
        os.makedirs(parent, exist_ok=True)
        self.path = f"{self.target}.converting-{os.getpid()}"
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.makedirs(self.path)

    def commit(self) -> None:
        aside = None
        if os.path.exists(self.target):
            aside = f"{self.target}.replaced-{os.getpid()}"
            os.rename(self.target, aside)
        os.rename(self.path, self.target)
        if aside is not None:
            if os.path.isdir(aside):
                shutil.rmtree(aside)
            else:
                os.remove(aside)

    def __enter__(self) -> "StagingFolder":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None and os.path.exists(self.path):
            shutil.rmtree(self.path)


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whose storage is exactly its data (torch.save writes a view's whole storage)."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def pipeline_place(name: str, num_layers: int) -> Tuple[int, str]:
    """GPTModel name -> (GPTModelPipe spec index NN, key in `layer_NN-model_TT-model_states.pt`)
    (docs/formats.md, 3B and 4)."""
    if name.startswith(_EMBEDDING):
        return 1, name[len(_EMBEDDING):]
    if name.startswith(_LAYER):
        layer, _, key = name[len(_LAYER):].partition(".")
        return int(layer) + 2, key
    if name.startswith(_FINAL_NORM):
        return num_layers + 2, name[len(_FINAL_NORM):]
    if name == _OUTPUT:
        return num_layers + 3, "lm_head.weight"
    raise ValueError(f"tensor {name} has no place in GPTModelPipe")


def _model_states(*, module: Optional[Dict[str, torch.Tensor]], args: argparse.Namespace,
                  fingerprint: ModelFingerprint, iteration: int, mp_world_size: int) -> dict:
    """DeepSpeed's keys (no optimizer, no scheduler) plus this project's client state."""
    saved_args = plain_args(args)
    saved_args.consumed_train_samples = 0
    saved_args.consumed_valid_samples = 0
    saved_args.padded_vocab_size = fingerprint.padded_vocab_size
    return {
        "module": module, "buffer_names": [], "optimizer": None, "param_shapes": None,
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
        "lr_scheduler": None, "data_sampler": None, "random_ltd": None,
        "sparse_tensor_module_names": [], "skipped_steps": 0, "global_steps": iteration,
        "global_samples": 0, "dp_world_size": 1, "mp_world_size": mp_world_size,
        "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration, "tokens": 0,
        "train_state": {"iteration": iteration, "consumed_train_samples": 0,
                        "consumed_valid_samples": 0, "consumed_train_tokens": 0,
                        "skipped_iterations": 0, "nan_iterations": 0,
                        "consecutive_nan_iterations": 0},
        "model_fingerprint": asdict(fingerprint), "args": saved_args}


def _shards(name: str, tensor: torch.Tensor, *, swiglu: bool, size: int) -> List[torch.Tensor]:
    try:
        parts = split_full(tensor, partition_of(name, swiglu=swiglu),
                           tensor_model_parallel_size=size)
    except ValueError as error:
        raise ValueError(f"{name} {tuple(tensor.shape)}: {error} "
                         f"(--tensor-model-parallel-size {size})") from None
    return [_own(part) for part in parts]


def _write_pipeline_files(folder: str, tensors: TensorSource, *, num_layers: int, size: int,
                          swiglu: bool) -> None:
    done: set = set()
    current: Optional[int] = None
    buffers: List[Dict[str, torch.Tensor]] = []

    def flush() -> None:
        for rank, content in enumerate(buffers):
            torch.save(content, os.path.join(folder, f"layer_{current:02d}-model_{rank:02d}"
                                                     "-model_states.pt"))
        done.add(current)

    for name, tensor in tensors():
        index, key = pipeline_place(name, num_layers)
        if index != current:
            if current is not None:
                flush()
            if index in done:
                raise ValueError(f"tensor {name} arrived after its layer's file was written")
            current, buffers = index, [{} for _ in range(size)]
        for rank, shard in enumerate(_shards(name, tensor, swiglu=swiglu, size=size)):
            buffers[rank][key] = shard
    if current is not None:
        flush()


def write_checkpoint(save_dir: str, tensors: TensorSource, *, args: argparse.Namespace,
                     fingerprint: ModelFingerprint, pipeline_engine: bool, swiglu: bool,
                     iteration: int = 0, force: bool = False) -> str:
    """Write `tensors()` (GPTModel name, full tensor), which may be called once per
    tensor-parallel rank, as checkpoint `global_step<iteration>` of `save_dir` at the layout of
    `fingerprint` (TP x PP; the ZeRO engine needs PP 1). `args` are the flags a run loading it
    uses; they are saved as the run's args. Returns the tag folder."""
    check_output_dir(save_dir, force=force, flag="--save")
    size = fingerprint.tensor_model_parallel_size
    stages = fingerprint.pipeline_model_parallel_size
    if not pipeline_engine and stages != 1:
        raise ValueError(f"--no-pipeline-parallel needs --pipeline-model-parallel-size 1, "
                         f"got {stages}")
    tag = tag_of_iteration(iteration)
    with StagingFolder(save_dir) as staging:
        tag_staging = os.path.join(staging.path, tag + STAGING_SUFFIX)
        os.makedirs(tag_staging)
        if pipeline_engine:
            _write_pipeline_files(tag_staging, tensors, num_layers=fingerprint.num_layers,
                                  size=size, swiglu=swiglu)
            states = _model_states(module=None, args=args, fingerprint=fingerprint,
                                   iteration=iteration, mp_world_size=size * stages)
            for rank in range(size * stages):
                torch.save(states, os.path.join(tag_staging, f"mp_rank_{rank:02d}_model_states.pt"))
        else:
            for rank in range(size):
                module = {name: _shards(name, tensor, swiglu=swiglu, size=size)[rank]
                          for name, tensor in tensors()}
                torch.save(_model_states(module=module, args=args, fingerprint=fingerprint,
                                         iteration=iteration, mp_world_size=size),
                           os.path.join(tag_staging, f"mp_rank_{rank:02d}_model_states.pt"))
                del module
        names = sorted(os.listdir(tag_staging))
        checksums = shared_checksums(tag_staging, names)
        commit_checkpoint(staging.path, tag, tag_staging, iteration=iteration,
                          checksums=checksums, world_size=size * stages,
                          fingerprint=fingerprint, has_optimizer_states=False,
                          has_rng_states=False)
        staging.commit()
    return os.path.join(save_dir, tag)
