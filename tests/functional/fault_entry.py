"""Test-only entry point: pretrain_gpt.py with a stall injected into one phase of a save.

STALL_IN_SAVE="PHASE:ITERATION:SECONDS" (PHASE a `megatron.checkpointing.SaveHooks` method,
e.g. after_engine_files) makes every rank that reaches PHASE of that iteration's save print a
marker line and sleep, so a test can kill it there deterministically; STALL_RANKS="1,3"
limits the stall to those global ranks (the others go on until they wait for them). The fault reaches the
product only through the `save_hooks` seam; not part of the product.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def stalling_hooks(spec: str):
    from megatron.checkpointing import SaveHooks

    phase, iteration, seconds = spec.split(":")
    if not callable(getattr(SaveHooks, phase, None)):
        raise ValueError(f"STALL_IN_SAVE: {phase} is not a SaveHooks phase")

    class StallingHooks(SaveHooks):
        pass

    ranks = os.environ.get("STALL_RANKS")
    stalling = None if not ranks else {int(rank) for rank in ranks.split(",")}

    def stall(self, **where):
        rank = os.environ.get("RANK", "0")
        if where["iteration"] == int(iteration) and (stalling is None or int(rank) in stalling):
            print(f"[rank {rank}] test hook: stalling {seconds} s at {phase} of {where['tag']}",
                  flush=True)
            time.sleep(float(seconds))

    setattr(StallingHooks, phase, stall)
    return StallingHooks()


def main() -> int:
    import pretrain_gpt

    spec = os.environ.get("STALL_IN_SAVE")
    return pretrain_gpt.main(sys.argv[1:], save_hooks=stalling_hooks(spec) if spec else None)


if __name__ == "__main__":
    sys.exit(main())
