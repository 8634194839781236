"""Memory per rank of a pretrain_gpt.py run, from its flags alone: nothing is started.

    python tools/estimate_memory.py --world-size 128 --device-memory-gib 80 \\
        <pretrain_gpt.py flags: --num-layers 40 --hidden-size 5120 ... --bf16 --zero-stage 1>

The flags go through pretrain_gpt.py's own parsing and validation (`parse_args`,
`build_config`) for `--world-size` ranks, so a layout pretrain_gpt.py would refuse is refused
here with the same message. Prints, per pipeline stage and rank: parameters, gradients,
optimizer state, activations (micro batches in flight for the 1F1B schedule), the optimizer
step's buffers (flat gradient partition; on a GPU the norm's fp64 copy), the runtime
overhead, the peak and the phase it is in (forward/backward or the optimizer step); then
whether the worst rank fits `--device-memory-gib`. The arithmetic is
`megatron.training.memory_estimate`.
Exit status: 0 fits (or no device memory given), 3 does not fit, 2 bad flags.
"""
import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2 ** 30


def _tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--world-size", type=int, default=1, help="number of ranks (processes)")
    parser.add_argument("--device-memory-gib", type=float, default=None,
                        help="memory of one device; the answer says whether the worst rank fits")
    parser.add_argument("--accelerator", default="cuda", choices=("cuda", "cpu"),
                        help="what the flags are validated for and the memory model (cpu: "
                             "resident set: only touched buffer pages count, and freed pages "
                             "stay, so the optimizer step adds to backward's)")
    parser.add_argument("--padded-vocab-size", type=int, default=None,
                        help="vocabulary after padding, when the tokenizer flags do not tell it")
    parser.add_argument("--overhead-gib", type=float, default=None,
                        help="the runtime's own memory (default: 0.39 on cpu, 1.5 on a GPU)")
    parser.add_argument("--help-estimate", action="help", help="this tool's own flags")
    return parser


def format_table(estimate, *, title: str = "") -> str:
    """The estimate as a Markdown table, one row per pipeline stage (GiB per rank)."""
    lines = [title] if title else []
    lines.append("| stage | layers | params/rank | parameters | gradients | optimizer state | "
                 "activations (micro batches) | step buffers | overhead | peak | peak in |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for stage in estimate.stages:
        lines.append(
            f"| {stage.stage} | {stage.num_layers} | {stage.num_parameters / 1e6:,.1f}M | "
            f"{stage.parameters / GIB:.2f} | {stage.gradients / GIB:.2f} | "
            f"{stage.optimizer_state / GIB:.2f} | {stage.activations / GIB:.2f} "
            f"({stage.micro_batches_in_flight}) | {stage.step_buffers / GIB:.2f} | "
            f"{stage.overhead / GIB:.2f} | {stage.peak / GIB:.2f} | {stage.peak_phase} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    tool_args, rest = _tool_parser().parse_known_args(argv)
    from megatron.arguments import parse_args
    from megatron.config.build import build_config
    from megatron.training.memory_estimate import estimate_memory

    if "--deepspeed" not in rest:
        rest = rest + ["--deepspeed"]  # every run of this project is a DeepSpeed run
    try:
        args = parse_args(rest, defaults={"tokenizer_type": "GPT2BPETokenizer"})
        config = build_config(args, world_size=tool_args.world_size,
                              accelerator_name=tool_args.accelerator)
        overhead = None if tool_args.overhead_gib is None else int(tool_args.overhead_gib * GIB)
        estimate = estimate_memory(config, padded_vocab=tool_args.padded_vocab_size,
                                   accelerator=tool_args.accelerator, overhead_bytes=overhead)
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"estimate_memory.py: error: {error}\n")
        return 2
    parallel, model = config.parallel, config.model
    recompute = ("full" if model.checkpoint_activations else model.recompute_granularity) or "none"
    print(f"{model.num_layers} layers, hidden {model.hidden_size}, seq {config.data.seq_length}, "
          f"{config.precision.dtype}, ZeRO-{parallel.zero_stage}, "
          f"TP{parallel.tensor_model_parallel_size}"
          f" x PP{parallel.pipeline_model_parallel_size} x DP{parallel.data_parallel_size}"
          f"{' (sequence parallel)' if parallel.sequence_parallel else ''}, micro batch "
          f"{config.batch.micro_batch_size}, {config.batch.gradient_accumulation_steps} micro "
          f"batches per step, recompute {recompute}")
    print(format_table(estimate))
    worst = estimate.worst
    phase = "optimizer step" if worst.peak_phase == "step" else "forward/backward"
    print(f"peak per rank: {worst.peak / GIB:.2f} GiB (stage {worst.stage}, {phase})")
    if tool_args.device_memory_gib is None:
        return 0
    device = tool_args.device_memory_gib * GIB
    if estimate.fits(device):
        print(f"fits: {worst.peak / GIB:.2f} GiB of {tool_args.device_memory_gib:g} GiB "
              f"({100 * worst.peak / device:.0f}%)")
        return 0
    print(f"does NOT fit: {worst.peak / GIB:.2f} GiB needed, {tool_args.device_memory_gib:g} GiB "
          f"per device")
    return 3


if __name__ == "__main__":
    sys.exit(main())
