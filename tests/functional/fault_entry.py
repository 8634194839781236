"""Test-only entry point: pretrain_gpt.py with a stall injected into one phase of a save.

STALL_IN_SAVE="PHASE:ITERATION:SECONDS" (PHASE a `megatron.checkpointing.SaveHooks` method,
e.g. after_engine_files) makes every rank that reaches PHASE of that iteration's save print a
marker line and sleep, so a test can kill it there deterministically; STALL_RANKS="1,3"
limits the stall to those global ranks (the others go on until they wait for them).
FAIL_WRITES_IN_SAVE="ITERATION" instead makes file writes fail on those ranks from the start of
that iteration's save (RLIMIT_FSIZE of 1 KiB, SIGXFSZ ignored: a write beyond it fails with
EFBIG, as on a full disk). MARK_SAVES=1 only prints "[rank R] test hook: PHASE of TAG" at every
phase of every save and goes on, so a test can kill the run at a moment of its choosing
(the random kill sweep). The fault reaches the
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


def failing_hooks(iteration: str):
    import resource
    import signal

    from megatron.checkpointing import SaveHooks

    ranks = os.environ.get("STALL_RANKS")
    failing = None if not ranks else {int(rank) for rank in ranks.split(",")}

    class FailingHooks(SaveHooks):
        def before_engine_files(self, **where):
            rank = int(os.environ.get("RANK", "0"))
            if where["iteration"] == int(iteration) and (failing is None or rank in failing):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    return FailingHooks()


def marking_hooks():
    from megatron.checkpointing import SaveHooks

    class MarkingHooks(SaveHooks):
        pass

    def marker(phase):
        def mark(self, **where):
            print(f"[rank {os.environ.get('RANK', '0')}] test hook: {phase} of {where['tag']}",
                  flush=True)
        return mark

    for phase in ("before_engine_files", "after_engine_files", "before_commit", "after_rename",
                  "between_trackers"):
        setattr(MarkingHooks, phase, marker(phase))
    return MarkingHooks()


def main() -> int:
    import pretrain_gpt

    stall, fail = os.environ.get("STALL_IN_SAVE"), os.environ.get("FAIL_WRITES_IN_SAVE")
    hooks = (stalling_hooks(stall) if stall else failing_hooks(fail) if fail
             else marking_hooks() if os.environ.get("MARK_SAVES") else None)
    return pretrain_gpt.main(sys.argv[1:], save_hooks=hooks)


if __name__ == "__main__":
    import pretrain_gpt

    pretrain_gpt.exit_process(main())  # as pretrain_gpt.py itself ends
