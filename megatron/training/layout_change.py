"""Resume a checkpoint saved on another TP x PP x DP layout (or by the other engine): its
weights and Adam state are read whole (`megatron.conversion`) and each rank takes its part,
placed where DeepSpeed's optimizer of THIS run keeps it. No staging folder, no manual step.

Per parameter (GPTModel names): the module weight is this tensor-parallel rank's slice of the
full weight; the fp32 master weights and Adam's moments go into the slices of DeepSpeed's
flattened partitions that this data-parallel rank owns (each parameter's `_hp_mapping`, set
by DeepSpeed, says which elements of the parameter live where). The base optimizer receives
its moments and step through its own `load_state_dict`, as after a normal load.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import torch

from megatron.checkpointing import CheckpointError, load_file
from megatron.conversion.checkpoint_reader import open_checkpoint, pipeline_parameter_name
from megatron.conversion.optimizer_reader import SavedOptimizerState, read_optimizer_state
from megatron.core import parallel_state
from megatron.model.tensor_parallel_layout import partition_of, split_full
from megatron.model.transformer_config import TransformerConfig
from megatron.tokenizer.tokenizer import pad_vocab_size

_NO_ZERO = object()  # a parameter DeepSpeed did not map: the torch optimizer holds it itself


def _live_parameters(module: torch.nn.Module, config: TransformerConfig, *, pipeline: bool
                     ) -> Dict[str, torch.nn.Parameter]:
    """GPTModel name -> this rank's parameter (a tied embedding appears once per stage)."""
    found = {}
    for name, param in module.named_parameters():
        if pipeline:
            name = pipeline_parameter_name(name, num_layers=config.num_layers)
        found[name] = param
    return found


_VOCABULARY_ROWS = ("word_embeddings.weight", "output_layer.weight")


def resize_vocabulary_rows(full: torch.Tensor, name: str, padded_vocab_size: int) -> torch.Tensor:
    """The embedding or output layer with `padded_vocab_size` rows: padding rows beyond the
    tokenizer's vocabulary are dropped, or added as zeros (the padded size depends on TP)."""
    if not name.endswith(_VOCABULARY_ROWS) or full.shape[0] == padded_vocab_size:
        return full
    if full.shape[0] > padded_vocab_size:
        return full[:padded_vocab_size]
    return torch.cat([full, full.new_zeros(padded_vocab_size - full.shape[0], *full.shape[1:])])


def check_vocabulary(saved_padded: int, config: TransformerConfig, *, vocab_size: int,
                     make_vocab_size_divisible_by: int, saved_tensor_model_parallel_size: int,
                     source: str) -> None:
    """A padded vocabulary that differs only because the tensor-parallel size changed is
    fine; any other difference means another tokenizer. CheckpointError names both sizes."""
    if saved_padded == config.padded_vocab_size:
        return
    expected = pad_vocab_size(vocab_size, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                              tensor_model_parallel_size=saved_tensor_model_parallel_size)
    if saved_padded != expected:
        raise CheckpointError(
            f"{source} does not match the flags: padded vocabulary size (tokenizer, "
            f"--make-vocab-size-divisible-by): "
            f"checkpoint {saved_padded}, flags {config.padded_vocab_size}; a tokenizer of "
            f"{vocab_size} tokens pads to {expected} at tensor-parallel size "
            f"{saved_tensor_model_parallel_size}, so the checkpoint used another tokenizer")


def _local_slice(full: torch.Tensor, name: str, config: TransformerConfig) -> torch.Tensor:
    full = resize_vocabulary_rows(full, name, config.padded_vocab_size)
    size = config.tensor_model_parallel_size
    rank = parallel_state.get_tensor_model_parallel_rank()
    return split_full(full, partition_of(name, swiglu=config.activation == "swiglu"),
                      tensor_model_parallel_size=size)[rank]


def _load_optimizer_state(optimizer: Any, parameters: Dict[str, torch.nn.Parameter],
                          saved: SavedOptimizerState, config: TransformerConfig) -> None:
    """Master weights, moments and step into DeepSpeed's optimizer (ZeRO 1/2, bf16, or the
    plain torch optimizer without ZeRO)."""
    base = getattr(optimizer, "optimizer", optimizer)
    groups = base.param_groups
    moments: Dict[int, Dict[str, torch.Tensor]] = {}
    for name, param in parameters.items():
        if name not in saved.tensors:
            raise CheckpointError(f"the checkpoint's optimizer state has no {name}")
        values = {key: _local_slice(tensor, name, config)
                  for key, tensor in saved.tensors[name].items()}
        mapping = getattr(param, "_hp_mapping", _NO_ZERO)
        if mapping is _NO_ZERO:
            moments[id(param)] = {"exp_avg": values["exp_avg"].to(param.dtype).clone(),
                                  "exp_avg_sq": values["exp_avg_sq"].to(param.dtype).clone()}
            continue
        if mapping is None:  # none of this parameter is in this rank's partition
            continue
        group = mapping.param_group_index
        flat = groups[group]["params"][0]
        state = moments.setdefault(id(flat), {"exp_avg": torch.zeros_like(flat),
                                              "exp_avg_sq": torch.zeros_like(flat)})
        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            fragment = values[key].reshape(-1).narrow(0, lp.start, lp.numel)
            target = mapping.hp_fragment if key == "fp32" else state[key].narrow(0, hp.start,
                                                                                   hp.numel)
            target.data.copy_(fragment)
    state_dict = base.state_dict()
    order = [p for group in groups for p in group["params"]]
    index_of = {id(p): i for i, p in enumerate(order)}
    state_dict["state"] = {
        index_of[key]: {"step": torch.tensor(saved.step, dtype=torch.float32),
                        "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}
        for key, state in moments.items()}
    base.load_state_dict(state_dict)


def load_on_other_layout(engine: Any, config: TransformerConfig, load_dir: str, tag: str, *,
                         pipeline: bool, load_optimizer: bool, vocab_size: int,
                         make_vocab_size_divisible_by: int) -> Dict[str, Any]:
    """Put checkpoint `tag` of `load_dir` (saved on any layout) into `engine` on this rank and
    return its client state (progress, scheduler). Every rank reads the files it needs; the
    checkpoint was already checked (complete, checksums, safe, same model shape) by the
    caller. `vocab_size` (the tokenizer's) tells a padded vocabulary that changed with the
    tensor-parallel size from another tokenizer's."""
    checkpoint = open_checkpoint(load_dir, load_tag=tag, verify_checksums=False)
    saved_padded = getattr(checkpoint.args, "padded_vocab_size", None)
    if saved_padded is not None:
        check_vocabulary(int(saved_padded), config, vocab_size=vocab_size,
                         make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                         saved_tensor_model_parallel_size=checkpoint.tensor_model_parallel_size,
                         source=f"--load {load_dir}: checkpoint {tag}")
    parameters = _live_parameters(engine.module, config, pipeline=pipeline)
    loaded = set()
    with torch.no_grad():
        for name, full in checkpoint.tensors():
            if name not in parameters:
                continue  # held by another pipeline stage
            parameters[name].data.copy_(_local_slice(full, name, config))
            loaded.add(name)
    missing = sorted(set(parameters) - loaded)
    if missing:
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} lacks {missing[0]}")
    if load_optimizer:
        _load_optimizer_state(engine.optimizer, parameters, read_optimizer_state(checkpoint),
                              config)
    elif hasattr(engine.optimizer, "refresh_fp32_params"):
        engine.optimizer.refresh_fp32_params()  # master weights from the loaded weights
    return load_file(os.path.join(checkpoint.tag_dir, "mp_rank_00_model_states.pt"))
