"""Read a checkpoint of any layout (TP x PP, ZeRO or pipeline engine, this project's or
upstream Megatron-DeepSpeed's) as ONE full model in GPTModel's parameter names, in a single
process: what text generation, Hugging Face export and reshaping start from.

The same safety as `--load` (docs/formats.md, 3C-3D): the tag must name a folder inside the
directory, the folder must be complete, its checksums must match when recorded, and every
`.pt` file unpickles weights only. Tensors are merged one name at a time from memory-mapped
files, so `tensors()` holds about one full tensor plus its shards at a time.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from megatron.checkpointing import (CheckpointError, load_file, missing_files, read_manifest,
                                    resolve_load_tag)
from megatron.checkpointing.integrity import damaged_files
from megatron.checkpointing.safe_load import refuse_unsafe_files
from megatron.model.gpt_model import flatten_nested_state_dict
from megatron.model.tensor_parallel_layout import merge_shards, partition_of

_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_MODEL_STATES = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_ZERO3_MODEL_STATES = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")
_EMBEDDING_PREFIX = "language_model.embedding."
_ENCODER_PREFIX = "language_model.encoder."


@dataclass
class SavedCheckpoint:
    """One checkpoint folder, opened: its args and progress now, its tensors on demand."""

    load_dir: str
    tag: str
    args: argparse.Namespace
    """The flags the run was started with (model shape, tokenizer, layout)."""
    iteration: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    pipeline_engine: bool
    """True when the pipeline engine wrote it (per-layer files)."""

    @property
    def tag_dir(self) -> str:
        return os.path.join(self.load_dir, self.tag)

    @property
    def num_layers(self) -> int:
        return int(self.args.num_layers)

    @property
    def swiglu(self) -> bool:
        return bool(getattr(self.args, "swiglu", False))

    @property
    def untied(self) -> bool:
        return bool(getattr(self.args, "untie_embeddings_and_output_weights", False))

    def tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(GPTModel name, full tensor) for every parameter, embedding first, layer by layer,
        then the final norm and (untied) the output layer. Tensors keep the saved dtype."""
        if self.pipeline_engine:
            yield from self._pipeline_tensors()
        else:
            yield from self._module_tensors()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The full model (tensor-parallel size 1) as GPTModel's state dict."""
        return {name: tensor.clone() for name, tensor in self.tensors()}

    # -- the ZeRO engine: one `module` per tensor-parallel rank ------------------------------

    def _module_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        shards = []
        for rank in range(self.tensor_model_parallel_size):
            path = self._path(f"mp_rank_{rank:02d}_model_states.pt")
            module = load_file(path, mmap=True).get("module")
            if not module:
                raise CheckpointError(f"--load {self.load_dir}: {path} holds no model weights "
                                      "(module is empty)")
            shards.append({name: value for name, value in flatten_nested_state_dict(module).items()
                           if torch.is_tensor(value)})
        for name in shards[0]:
            yield name, self._merge(name, [shard[name] for shard in shards])

    # -- the pipeline engine: one file per layer and tensor-parallel rank -------------------

    def _pipeline_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        layers = self.num_layers
        for index in range(1, layers + 4):
            if index == layers + 3 and not self.untied:
                return  # the tied head repeats the embedding
            shards = [load_file(self._path(f"layer_{index:02d}-model_{rank:02d}-model_states.pt"),
                                mmap=True)
                      for rank in range(self.tensor_model_parallel_size)]
            for name in shards[0]:
                full_name = _pipeline_name(name, index, layers)
                yield full_name, self._merge(full_name, [shard[name] for shard in shards])

    # -- shared ---------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        path = os.path.join(self.tag_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"--load {self.load_dir}: checkpoint {self.tag} lacks {name} "
                                  f"(tensor-parallel size {self.tensor_model_parallel_size}, "
                                  f"pipeline size {self.pipeline_model_parallel_size})")
        return path

    def _merge(self, name: str, parts: List[torch.Tensor]) -> torch.Tensor:
        return merge_shards(parts, partition_of(name, swiglu=self.swiglu))


def _pipeline_name(name: str, index: int, num_layers: int) -> str:
    """A pipeline layer file's key -> GPTModel's name (docs/formats.md, 3B and 4)."""
    if index == 1:
        return _EMBEDDING_PREFIX + name
    if index <= num_layers + 1:
        return f"{_ENCODER_PREFIX}layers.{index - 2}.{name}"
    if index == num_layers + 2:
        return f"{_ENCODER_PREFIX}final_layernorm.{name}"
    if name == "lm_head.weight":
        return "language_model.output_layer.weight"
    raise CheckpointError(f"unexpected key {name!r} in the LM-head file layer_{index:02d}")


def pipeline_parameter_name(name: str, *, num_layers: int) -> str:
    """GPTModelPipe's parameter name (`tied_modules.embed.word_embeddings.weight`,
    `3.self_attention.dense.weight`, `<L+2>.weight`) -> GPTModel's."""
    if name.startswith("tied_modules.embed."):
        return _EMBEDDING_PREFIX + name[len("tied_modules.embed."):]
    index, _, rest = name.partition(".")
    if not index.isdigit() or not rest:
        raise CheckpointError(f"unexpected pipeline parameter name {name!r}")
    return _pipeline_name(rest, int(index), num_layers)


def _check_folder(load_dir: str, tag: str, *, verify_checksums: bool) -> None:
    tag_dir = os.path.join(load_dir, tag)
    missing = missing_files(tag_dir)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} is missing or incomplete: "
                              f"missing {shown}")
    checksums = (read_manifest(tag_dir) or {}).get("checksums")
    if verify_checksums and checksums:
        damaged = damaged_files(tag_dir, checksums)
        if damaged:
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} is damaged: "
                                  + ", ".join(damaged[:3]))
    refuse_unsafe_files(load_dir, tag_dir)


def open_checkpoint(load_dir: str, *, load_tag: Optional[str] = None,
                    verify_checksums: bool = True) -> SavedCheckpoint:
    """Open the checkpoint `--load load_dir [--load-tag load_tag]` would load. Raises
    `CheckpointError` (one line naming the directory and the problem) when there is none, it
    is incomplete, damaged or unsafe, or it is of a kind that cannot be read here (ZeRO-3)."""
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"--load {load_dir}: no such directory")
    tag = resolve_load_tag(load_dir, load_tag)
    if tag is None:
        raise CheckpointError(f"--load {load_dir}: no checkpoint found (no latest or "
                              "latest_checkpointed_iteration.txt file; pass --load-tag)")
    _check_folder(load_dir, tag, verify_checksums=verify_checksums)
    tag_dir = os.path.join(load_dir, tag)
    names = os.listdir(tag_dir)
    if any(_ZERO3_MODEL_STATES.match(name) for name in names):
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} was written by ZeRO stage 3, "
                              "whose weights are partitioned over data-parallel ranks; reading "
                              "it outside training is not supported")
    model_states = sorted(name for name in names if _MODEL_STATES.match(name))
    if not model_states:
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} has no "
                              "mp_rank_XX_model_states.pt file")
    first = load_file(os.path.join(tag_dir, model_states[0]), mmap=True)
    args = first.get("args")
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"--load {load_dir}: {tag_dir}/{model_states[0]} has no saved "
                              "args, so the model's shape is unknown")
    for required in ("num_layers", "hidden_size", "num_attention_heads"):
        if getattr(args, required, None) is None:
            raise CheckpointError(f"--load {load_dir}: the saved args of {tag} lack {required}")
    pipeline_engine = any(_LAYER_FILE.match(name) for name in names)
    tp = int(getattr(args, "tensor_model_parallel_size", 1) or 1)
    pp = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
    if not pipeline_engine:
        pp = 1  # --no-pipeline-parallel runs record the flag's value but have no stages
    iteration = first.get("iteration")
    if iteration is None:
        iteration = (first.get("train_state") or {}).get("iteration", 0)
    return SavedCheckpoint(load_dir=load_dir, tag=tag, args=args, iteration=int(iteration),
                           tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                           pipeline_engine=pipeline_engine)

