"""Read the optimizer state of a ZeRO (stage 1/2) or bf16 checkpoint as full per-parameter
tensors in GPTModel's names: fp32 master weights and Adam's two moments, merged over the
data-parallel partitions and the tensor-parallel shards of the layout that wrote them.

DeepSpeed's optimizer files (`[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt`, one per
data-parallel rank D of model-parallel rank XX) hold, per parameter group, rank D's slice of
the group's flattened fp32 weights (`single_partition_of_fp32_groups`), the base optimizer's
state for that slice (`base_optimizer_state`: `exp_avg`, `exp_avg_sq`, `step`), and
`param_slice_mappings`: for every parameter name the (start, numel) of its elements inside
this slice. A parameter's elements are contiguous in the flattened group and the slices
follow the ranks in order, so its full (tensor-parallel-local) value is its fragments of
ranks 0, 1, ... concatenated; the shape comes from `param_shapes` in the model states.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from megatron.checkpointing import CheckpointError, load_file
from megatron.checkpointing.layout import optimizer_files
from megatron.conversion.checkpoint_reader import SavedCheckpoint, pipeline_parameter_name
from megatron.model.tensor_parallel_layout import merge_shards, partition_of

OPTIMIZER_KEYS = ("fp32", "exp_avg", "exp_avg_sq")


@dataclass
class SavedOptimizerState:
    """Adam's state of every parameter, full size (tensor-parallel size 1)."""

    step: float
    """Optimizer steps taken (the same for every parameter)."""
    tensors: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    """GPTModel name -> {"fp32": master weights, "exp_avg": ..., "exp_avg_sq": ...}."""


def _engine_to_model_name(name: str, checkpoint: SavedCheckpoint) -> str:
    if checkpoint.pipeline_engine:
        return pipeline_parameter_name(name, num_layers=checkpoint.num_layers)
    return name[len("module."):] if name.startswith("module.") else name


def _model_rank_state(checkpoint: SavedCheckpoint, model_rank: int, files: List[str]
                      ) -> (Dict[str, Dict[str, torch.Tensor]], float):
    """One model-parallel rank's parameters, merged over its data-parallel files."""
    tag_dir = checkpoint.tag_dir
    shapes = {}
    states = load_file(os.path.join(tag_dir, f"mp_rank_{model_rank:02d}_model_states.pt"),
                       mmap=True)
    for group in states.get("param_shapes") or []:
        shapes.update(group)
    pieces: Dict[str, Dict[str, List[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    steps = set()
    for name in files:
        content = load_file(os.path.join(tag_dir, name), mmap=True)["optimizer_state_dict"]
        mappings = content.get("param_slice_mappings")
        if mappings is None:
            raise CheckpointError(f"--load {checkpoint.load_dir}: {tag_dir}/{name} has no "
                                  "param_slice_mappings (written by a DeepSpeed older than "
                                  "0.10?); it cannot be re-split for another layout")
        base = content["base_optimizer_state"]["state"]
        for group, group_mappings in enumerate(mappings):
            flats = {"fp32": content["single_partition_of_fp32_groups"][group],
                     "exp_avg": base[group]["exp_avg"], "exp_avg_sq": base[group]["exp_avg_sq"]}
            steps.add(float(base[group]["step"]))
            for parameter, address in group_mappings.items():
                for key, flat in flats.items():
                    pieces[parameter][key].append(
                        flat.view(-1).narrow(0, address.start, address.numel))
    if len(steps) > 1:
        raise CheckpointError(f"--load {checkpoint.load_dir}: the optimizer files of "
                              f"model-parallel rank {model_rank} disagree on the step count")
    merged = {}
    for parameter, by_key in pieces.items():
        if parameter not in shapes:
            raise CheckpointError(f"--load {checkpoint.load_dir}: optimizer state for "
                                  f"{parameter}, which param_shapes of mp_rank_{model_rank:02d} "
                                  "does not list")
        merged[_engine_to_model_name(parameter, checkpoint)] = {
            key: torch.cat(parts).view(shapes[parameter]) for key, parts in by_key.items()}
    return merged, steps.pop() if steps else 0.0


def read_optimizer_state(checkpoint: SavedCheckpoint) -> SavedOptimizerState:
    """Adam's full state of `checkpoint` (any TP x PP x DP layout, ZeRO stage 1/2 or bf16).
    Raises CheckpointError when the checkpoint has no such optimizer files."""
    files = optimizer_files(checkpoint.tag_dir)
    if not files:
        raise CheckpointError(f"--load {checkpoint.load_dir}: checkpoint {checkpoint.tag} has no "
                              "ZeRO optimizer files (saved with --no-save-optim, or with ZeRO "
                              "stage 0): resuming on another layout needs them; pass "
                              "--no-load-optim or --finetune to load the weights only")
    tp = checkpoint.tensor_model_parallel_size
    by_tp_rank: Dict[int, Dict[str, Dict[str, torch.Tensor]]] = defaultdict(dict)
    steps = set()
    for model_rank in sorted(files):
        state, step = _model_rank_state(checkpoint, model_rank, files[model_rank])
        steps.add(step)
        for name, tensors in state.items():
            # A tied embedding is on the first and the last stage, with the same state.
            by_tp_rank[model_rank % tp].setdefault(name, tensors)
    if len(steps) > 1:
        raise CheckpointError(f"--load {checkpoint.load_dir}: the optimizer files disagree on "
                              f"the step count ({sorted(steps)})")
    result = SavedOptimizerState(step=steps.pop())
    for name in by_tp_rank[0]:
        partition = partition_of(name, swiglu=checkpoint.swiglu)
        result.tensors[name] = {
            key: merge_shards([by_tp_rank[rank][name][key] for rank in range(tp)], partition)
            for key in OPTIMIZER_KEYS}
    return result
