"""Pretrain a GPT model on DeepSpeed.

    deepspeed pretrain_gpt.py <megatron flags> --deepspeed --deepspeed_config ds.json
    torchrun --nproc_per_node N pretrain_gpt.py ...
    python pretrain_gpt.py ...            (a single process)

Flags are Megatron-DeepSpeed's; `--help` lists them.
"""
import argparse
import os
import sys
from typing import List, Optional


def _extra_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("run safety and reporting (this project)")
    group.add_argument("--max-consecutive-nonfinite-iterations", type=int, default=10,
                       help="Stop the run after this many consecutive iterations whose loss is "
                            "NaN/Inf (their updates are skipped). Default 10.")
    group.add_argument("--peak-tflops-per-device", type=float, default=None,
                       help="Peak TFLOP/s of one device for the MFU column of the log "
                            "(e.g. 989 for an H100 in bf16). Without it no MFU is printed.")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from megatron.arguments import parse_args
    from megatron.config.build import build_config

    args = parse_args(argv, extra_args_provider=_extra_flags,
                      defaults={"tokenizer_type": "GPT2BPETokenizer"})
    from deepspeed.accelerator import get_accelerator

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        config = build_config(args, world_size=world_size,
                              accelerator_name=get_accelerator().device_name())
    except (ValueError, FileNotFoundError) as error:
        print(f"pretrain_gpt.py: error: {error}", file=sys.stderr)
        return 2
    if args.max_consecutive_nonfinite_iterations < 1:
        print("pretrain_gpt.py: error: --max-consecutive-nonfinite-iterations must be >= 1",
              file=sys.stderr)
        return 2

    from megatron.pretraining import build_run, run
    from megatron.checkpointing import CheckpointError
    from megatron.training import TrainingError

    try:
        context = build_run(config, peak_tflops_per_device=args.peak_tflops_per_device,
                            args=args)
        run(context, max_consecutive_nonfinite=args.max_consecutive_nonfinite_iterations)
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"pretrain_gpt.py: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
