"""Reconcile the DeepSpeed JSON (--deepspeed_config) with the flags.

Rule for every setting that exists in both places: a flag given on the command line and a
JSON key that disagree raise ValueError naming both; a key the JSON leaves out (or sets to
"auto") is filled from the flag; a flag left at its default takes the JSON's value.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

from megatron.config.schema import PrecisionConfig

_ABSENT = object()


def load_deepspeed_json(path: str, flag: str = "--deepspeed_config") -> Dict[str, Any]:
    """Read the JSON file; FileNotFoundError / ValueError name the flag and the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag} {path} is not valid JSON: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"{flag} {path} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and isinstance(a, bool) == isinstance(b, bool)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


class _Merger:
    """Reads and writes dotted keys of the config, applying the reconciliation rule."""

    def __init__(self, config: Dict[str, Any], args: argparse.Namespace, explicit: FrozenSet[str],
                 source: str) -> None:
        self.config = config
        self.args = args
        self.explicit = explicit
        self.source = source

    def get(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _ABSENT
            node = node[part]
        return _ABSENT if node == "auto" else node

    def set(self, key: str, value: Any) -> None:
        node = self.config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def merge(self, key: str, dest: str, flag: str, *, to_json: Callable[[Any], Any] = lambda v: v,
              from_json: Callable[[Any], Any] = lambda v: v, fill: bool = True) -> Any:
        """Effective value of `dest`/`key` under the rule; fills the JSON when `fill`."""
        flag_value = getattr(self.args, dest)
        json_value = self.get(key)
        if json_value is _ABSENT:
            if fill and flag_value is not None:
                self.set(key, to_json(flag_value))
            return flag_value
        if dest in self.explicit and not _same(to_json(flag_value), json_value):
            raise ValueError(f"{flag} {flag_value} disagrees with \"{key}\": {json.dumps(json_value)} in "
                             f"{self.source}; make them equal or drop one of them")
        return from_json(json_value)


@dataclass(frozen=True)
class ReconciledDeepSpeed:
    """The merged DeepSpeed config and the effective values of the flags it governs."""

    config: Dict[str, Any]
    micro_batch_size: int
    global_batch_size: int
    gradient_accumulation_steps: int
    zero_stage: int
    offload_optimizer: bool
    """True with "zero_optimization.offload_optimizer.device": "cpu" (ZeRO-Offload)."""
    clip_grad: float
    precision: PrecisionConfig
    activation_checkpointing: Dict[str, bool]


_REFUSED_SECTIONS = {
    "optimizer": "the optimizer is built from --optimizer/--lr/--adam-*/--weight-decay and passed to "
                 "deepspeed.initialize, which would silently ignore this section",
    "scheduler": "the learning-rate schedule comes from the --lr-* flags",
}
_NOT_YET = {
    "curriculum_learning.enabled": "curriculum learning",
    "data_efficiency.enabled": "DeepSpeed data efficiency",
    "compression_training": "compression training",
    "checkpoint.load_universal": "universal checkpoints",
}
# DeepSpeed activation-checkpointing keys and the flags MDS passes to deepspeed.checkpointing.
_ACTIVATION_KEYS = (
    ("partition_activations", "partition_activations", "--partition-activations"),
    ("contiguous_memory_optimization", "contigious_checkpointing", "--contigious-checkpointing"),
    ("cpu_checkpointing", "checkpoint_in_cpu", "--checkpoint-in-cpu"),
    ("synchronize_checkpoint_boundary", "synchronize_each_layer", "--synchronize-each-layer"),
    ("profile", "profile_backward", "--profile-backward"),
)


# The top-level keys DeepSpeed 0.19 reads (its DeepSpeedConfig, the activation-checkpointing,
# flops-profiler, aio and autotuning configs); any other key would be ignored silently.
_DEEPSPEED_KEYS = frozenset((
    "activation_checkpointing", "aio", "amp", "autotuning", "bf16", "bfloat16", "checkpoint",
    "comet", "comms_logger", "communication_data_type", "compile", "compression_training",
    "csv_monitor", "curriculum_learning", "data_efficiency", "data_types", "dataloader_drop_last",
    "datastates_ckpt", "disable_allgather", "disable_python_gc", "dump_state", "eigenvalue",
    "elasticity", "expert_parallel", "flops_profiler", "fp16", "gradient_accumulation_steps",
    "gradient_allreduce_op", "gradient_clipping", "gradient_predivide_factor", "graph_harvesting",
    "hybrid_engine", "log_level", "managed_gradient_accumulation", "memory_breakdown", "nebula",
    "optimizer", "pipeline", "prescale_gradients", "progressive_layer_drop", "quantize_training",
    "scheduler", "seq_parallel_communication_data_type", "sequence_parallel_size",
    "sparse_attention", "sparse_gradients", "steps_per_print", "tensor_parallel", "tensorboard",
    "timers", "torch_autocast", "train_batch_size", "train_micro_batch_size_per_gpu",
    "use_data_before_expert_parallelism", "vocabulary_size", "wall_clock_breakdown", "wandb",
    "weight_quantization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "zero_optimization"))


def _check_sections(merger: _Merger) -> None:
    unknown = sorted(key for key in merger.config if key not in _DEEPSPEED_KEYS)
    if unknown:
        raise ValueError(f"{', '.join(json.dumps(k) for k in unknown)} in {merger.source}: not a "
                         "DeepSpeed section (DeepSpeed would ignore it); check the spelling")
    for section, why in _REFUSED_SECTIONS.items():
        if section in merger.config:
            raise ValueError(f"\"{section}\" in {merger.source} is not allowed: {why}; remove it")
    for key, feature in _NOT_YET.items():
        value = merger.get(key)
        if value is not _ABSENT and value not in (False, None, {}):
            raise ValueError(f"\"{key}\" in {merger.source}: {feature} is not supported yet")


def _batch(merger: _Merger, data_parallel_size: int) -> Tuple[int, int, int]:
    micro = merger.merge("train_micro_batch_size_per_gpu", "micro_batch_size", "--micro-batch-size", fill=False)
    if micro is None:
        raise ValueError("--micro-batch-size is required (or train_micro_batch_size_per_gpu in the "
                         "DeepSpeed JSON)")
    if micro <= 0:
        raise ValueError(f"--micro-batch-size must be positive, got {micro}")
    json_steps = merger.get("gradient_accumulation_steps")
    glob = merger.merge("train_batch_size", "global_batch_size", "--global-batch-size", fill=False)
    if glob is None:
        glob = micro * data_parallel_size * (1 if json_steps is _ABSENT else int(json_steps))
    if glob <= 0 or glob % (micro * data_parallel_size):
        raise ValueError(f"--global-batch-size {glob} must be a positive multiple of --micro-batch-size "
                         f"{micro} times the data-parallel size {data_parallel_size}")
    steps = glob // (micro * data_parallel_size)
    if json_steps is not _ABSENT and int(json_steps) != steps:
        raise ValueError(f"\"gradient_accumulation_steps\": {json_steps} in {merger.source} disagrees with "
                         f"--global-batch-size {glob} / (--micro-batch-size {micro} x data-parallel size "
                         f"{data_parallel_size}) = {steps}")
    merger.set("train_micro_batch_size_per_gpu", micro)
    merger.set("train_batch_size", glob)
    merger.set("gradient_accumulation_steps", steps)
    return micro, glob, steps


def _bf16_section(merger: _Merger) -> str:
    """The JSON's name for the bf16 section: DeepSpeed reads "bf16", or else "bfloat16"."""
    return "bfloat16" if "bfloat16" in merger.config and "bf16" not in merger.config else "bf16"


def _precision(merger: _Merger) -> str:
    args = merger.args
    if args.fp16 and args.bf16:
        raise ValueError("--fp16 and --bf16 are mutually exclusive")
    bf16_key = _bf16_section(merger)
    for key, flag, wanted in (("fp16", "--fp16", args.fp16), (bf16_key, "--bf16", args.bf16)):
        enabled = merger.get(f"{key}.enabled")
        if enabled is _ABSENT:
            if wanted:
                merger.set(f"{key}.enabled", True)
        elif bool(enabled) != bool(wanted):
            state = "given" if wanted else "not given"
            raise ValueError(f"\"{key}.enabled\": {json.dumps(enabled)} in {merger.source} disagrees with "
                             f"{flag} ({state}); the flag sets the parameter dtype, so they must agree")
    return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"


def _bf16_overflow_pass(merger: _Merger) -> None:
    """DeepSpeed's ZeRO optimizer with bf16 (`bf16.check_grad_overflow`, default true) runs an
    amax and an amin over every gradient each step to skip non-finite ones. The training
    engine's NonFiniteStepGuard already skips such steps on every rank together, so here the
    default is false: ~100 ms of a 4 s step at 125M bf16 on a CPU (tests/bench/RESULTS.md). A
    JSON that sets the key keeps its value."""
    key = _bf16_section(merger)
    if merger.get(f"{key}.check_grad_overflow") is _ABSENT:
        merger.set(f"{key}.check_grad_overflow", False)


def _power_of_two(value: float) -> int:
    power = math.log2(value) if value > 0 else float("nan")
    if not power.is_integer():
        raise ValueError(f"--initial-loss-scale {value} must be a power of 2 (DeepSpeed takes "
                         f"fp16.initial_scale_power)")
    return int(power)


def _loss_scaling(merger: _Merger, fp16: bool) -> Tuple[Optional[float], float, float, float, int]:
    fill = fp16
    loss_scale = merger.merge("fp16.loss_scale", "loss_scale", "--loss-scale", fill=False,
                              to_json=lambda v: 0 if v is None else v,
                              from_json=lambda v: None if v == 0 else float(v))
    if fill:
        merger.set("fp16.loss_scale", 0 if loss_scale is None else loss_scale)
    initial = merger.merge("fp16.initial_scale_power", "initial_loss_scale", "--initial-loss-scale",
                           fill=fill, to_json=_power_of_two, from_json=lambda p: float(2 ** int(p)))
    minimum = merger.merge("fp16.min_loss_scale", "min_loss_scale", "--min-loss-scale", fill=fill)
    window = merger.merge("fp16.loss_scale_window", "loss_scale_window", "--loss-scale-window", fill=fill,
                          to_json=lambda v: int(v) if float(v).is_integer() else v)
    hysteresis = merger.merge("fp16.hysteresis", "hysteresis", "--hysteresis", fill=fill)
    return loss_scale, float(initial), float(minimum), float(window), int(hysteresis)


def _zero(merger: _Merger) -> int:
    stage = merger.merge("zero_optimization.stage", "zero_stage", "--zero-stage", to_json=int, from_json=int)
    if int(stage) not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3 (--zero-stage / \"zero_optimization.stage\"), "
                         f"got {stage}")
    args = merger.args
    for dest, key, flag in (("zero_reduce_scatter", "reduce_scatter", "--zero-reduce-scatter"),
                            ("zero_contigious_gradients", "contiguous_gradients", "--zero-contigious-gradients")):
        if getattr(args, dest):
            merger.merge(f"zero_optimization.{key}", dest, flag)
    for dest, key, flag in (("zero_reduce_bucket_size", "reduce_bucket_size", "--zero-reduce-bucket-size"),
                            ("zero_allgather_bucket_size", "allgather_bucket_size",
                             "--zero-allgather-bucket-size")):
        if getattr(args, dest):
            merger.merge(f"zero_optimization.{key}", dest, flag, to_json=int)
    if args.optimizer == "sgd" and int(stage) > 0 and merger.get("zero_allow_untested_optimizer") is _ABSENT:
        merger.set("zero_allow_untested_optimizer", True)  # DeepSpeed's ZeRO list omits torch SGD
    return int(stage)


def _offload(merger: _Merger, stage: int) -> bool:
    """ZeRO-Offload of the optimizer to the CPU, which needs DeepSpeed's CPU Adam (--cpu-optimizer):
    DeepSpeed refuses a torch optimizer there, and DeepSpeedCPUAdam steps only CPU tensors."""
    args = merger.args
    device = merger.get("zero_optimization.offload_optimizer.device")
    device = "none" if device is _ABSENT or device is None else str(device)
    param_device = merger.get("zero_optimization.offload_param.device")
    if param_device not in (_ABSENT, None, "none"):
        raise ValueError(f"\"zero_optimization.offload_param.device\": {json.dumps(param_device)} in "
                         f"{merger.source}: ZeRO-3 parameter offload is not supported yet")
    if device not in ("none", "cpu"):
        raise ValueError(f"\"zero_optimization.offload_optimizer.device\": {json.dumps(device)} in "
                         f"{merger.source} is not supported yet; use \"cpu\" or \"none\"")
    section = f"\"zero_optimization.offload_optimizer.device\": \"{device}\" in {merger.source}"
    if device == "none":
        if args.cpu_optimizer:
            raise ValueError("--cpu-optimizer needs ZeRO-Offload: set \"zero_optimization\": "
                             "{\"offload_optimizer\": {\"device\": \"cpu\"}} in --deepspeed_config")
        return False
    if not args.cpu_optimizer:
        raise ValueError(f"{section} needs --cpu-optimizer (DeepSpeed's CPU Adam; DeepSpeed refuses "
                         "a torch optimizer with ZeRO-Offload)")
    if args.optimizer != "adam":
        raise ValueError(f"--cpu-optimizer needs --optimizer adam, got --optimizer {args.optimizer}")
    if stage not in (1, 2):
        raise ValueError(f"{section} needs ZeRO stage 1 or 2 (--zero-stage / \"zero_optimization.stage\" "
                         f"is {stage}){': ZeRO-3 with offload is not tested yet' if stage == 3 else ''}")
    if not args.no_pipeline_parallel:
        raise ValueError(f"{section} needs --no-pipeline-parallel: ZeRO-Offload with DeepSpeed's "
                         "pipeline engine is not supported yet")
    return True


def _unpartitioned_pipeline_transfers(merger: _Merger) -> None:
    """With --sequence-parallel each TP rank holds a different sequence chunk, so the pipeline
    engine must send whole activations and gradients: its default splits them across the TP
    ranks and re-gathers them, which assumes every TP rank holds the same tensor."""
    for key in ("pipeline.pipe_partitioned", "pipeline.grad_partitioned"):
        if merger.get(key) is True:
            raise ValueError(f"--sequence-parallel with the pipeline engine needs {key} false "
                             f"in {merger.source}, which sets it true")
        merger.set(key, False)


def reconcile_deepspeed_config(json_config: Dict[str, Any], args: argparse.Namespace, *,
                               explicit: FrozenSet[str], data_parallel_size: int,
                               source: str = "the DeepSpeed JSON") -> ReconciledDeepSpeed:
    """Merge `json_config` (not modified) with the flags in `args`; see the module docstring."""
    merger = _Merger(copy.deepcopy(json_config), args, explicit, source)
    _check_sections(merger)
    micro, glob, steps = _batch(merger, data_parallel_size)
    dtype = _precision(merger)
    if dtype == "bf16":
        _bf16_overflow_pass(merger)
    loss_scale, initial, minimum, window, hysteresis = _loss_scaling(merger, dtype == "fp16")
    if args.accumulate_allreduce_grads_in_fp32:
        if dtype == "fp16":
            raise ValueError("--accumulate-allreduce-grads-in-fp32 with --fp16 is not supported yet "
                             "(DeepSpeed accumulates fp16 gradients in fp16); use --bf16")
        if dtype == "bf16":
            merger.merge("data_types.grad_accum_dtype", "accumulate_allreduce_grads_in_fp32",
                         "--accumulate-allreduce-grads-in-fp32", to_json=lambda v: "fp32" if v else "bf16")
    clip = merger.merge("gradient_clipping", "clip_grad", "--clip-grad")
    stage = _zero(merger)
    offload = _offload(merger, stage)
    if dtype == "bf16" and stage == 0 and merger.get("data_types.grad_accum_dtype") == "fp32":
        # DeepSpeed keeps fp32 gradients of bf16 weights only in its ZeRO/BF16 optimizers.
        raise ValueError("--accumulate-allreduce-grads-in-fp32 / \"data_types.grad_accum_dtype\": \"fp32\" "
                         "with --bf16 needs ZeRO stage 1, 2 or 3 (--zero-stage / "
                         "\"zero_optimization.stage\" is 0): DeepSpeed refuses that mix")
    if merger.get("steps_per_print") is _ABSENT:
        merger.set("steps_per_print", args.log_interval)
    activation = {dest: bool(merger.merge(f"activation_checkpointing.{key}", dest, flag, fill=False))
                  for key, dest, flag in _ACTIVATION_KEYS}
    for key, dest, _ in _ACTIVATION_KEYS:
        if activation[dest] or merger.get(f"activation_checkpointing.{key}") is not _ABSENT:
            merger.set(f"activation_checkpointing.{key}", activation[dest])
    if args.sequence_parallel and not args.no_pipeline_parallel:
        _unpartitioned_pipeline_transfers(merger)
    precision = PrecisionConfig(
        dtype=dtype, loss_scale=loss_scale, initial_loss_scale=initial, min_loss_scale=minimum,
        loss_scale_window=window, hysteresis=hysteresis,
        accumulate_allreduce_grads_in_fp32=args.accumulate_allreduce_grads_in_fp32 or dtype == "bf16")
    return ReconciledDeepSpeed(merger.config, micro, glob, steps, stage, offload, float(clip), precision,
                               activation)
