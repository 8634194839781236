"""Pretrain a GPT model on DeepSpeed.

    deepspeed pretrain_gpt.py <megatron flags> --deepspeed --deepspeed_config ds.json
    torchrun --nproc_per_node N pretrain_gpt.py ...
    python pretrain_gpt.py ...            (a single process)

Flags are Megatron-DeepSpeed's; `--help` lists them.
"""
import os
import sys
from typing import List, Optional


TRACEBACK_VARIABLE = "MEGATRON_TRACEBACK"


def _error(message: str) -> None:
    """One line on stderr, written at once so that the lines of several ranks never mix;
    with MEGATRON_TRACEBACK=1 in the environment, the traceback of the error comes first."""
    if os.environ.get(TRACEBACK_VARIABLE) == "1" and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    sys.stderr.write(f"pretrain_gpt.py: error: {message}\n")
    sys.stderr.flush()


def _leave_process_group() -> None:
    """After a run that ended on every rank: meet, then tear the process group down while the
    interpreter is whole (left to interpreter shutdown, gloo's teardown can abort)."""
    import torch.distributed as dist

    try:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # never mask the run's own outcome
        pass


def exit_process(code: int) -> None:
    """End the program with `code`. A failed run leaves at once once its line is out
    (os._exit): tearing down a half-built DeepSpeed engine and the process group at interpreter
    shutdown has aborted refused runs (SIGABRT, exit -6 instead of 1), and no rank waits for
    this one. Writers were closed by the run itself."""
    if code == 0:
        sys.exit(0)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[List[str]] = None, *, save_hooks=None) -> int:
    """Parse, validate, build and run; 0 on success, 2 for bad flags, 1 for a failed run.

    `save_hooks` (a `megatron.checkpointing.SaveHooks`) is the fault-injection seam of tests.
    """
    from megatron.arguments import parse_args
    from megatron.config.build import build_config

    args = parse_args(argv, defaults={"tokenizer_type": "GPT2BPETokenizer"})
    from deepspeed.accelerator import get_accelerator

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        config = build_config(args, world_size=world_size,
                              accelerator_name=get_accelerator().device_name())
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 2

    from megatron.checkpointing import CheckpointError
    from megatron.training import TrainingError, build_run, run

    try:
        run(build_run(config, args=args, save_hooks=save_hooks))
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 1
    _leave_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
