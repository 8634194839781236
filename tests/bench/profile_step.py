"""Run pretrain_gpt.py with a torch.profiler op table of one training step.

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/profile_step.py --profile-step 3 \
        --rows 30 -- <pretrain_gpt.py flags>

The run's own `--profile` writes Chrome traces; reading a ranked table of operators out of
those needs self-time bookkeeping, so this wrapper swaps the run's step profiler for one that
prints `key_averages()` (sorted by self CPU time) of the chosen step on rank 0 instead.
Everything else is the unmodified entry point, run in this process.
"""
import argparse
import os
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class OpTableProfiler:
    """Duck-types `megatron.training.profiler.StepProfiler`: profiles step `profile_step`
    (counted from 1) and prints the op table when it ends."""

    def __init__(self, profile_step: int, rows: int, stack_of: str = "") -> None:
        self.profile_step = profile_step
        self.rows = rows
        self.stack_of = stack_of
        self.step = 0
        self.profiler = None

    def step_begin(self) -> None:
        import torch

        self.step += 1
        if self.step == self.profile_step:
            # Python frames reach the events only with the profiler's verbose config.
            verbose = torch._C._profiler._ExperimentalConfig(verbose=True)
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], with_stack=bool(self.stack_of),
                experimental_config=verbose if self.stack_of else None)
            self.profiler.__enter__()

    def step_end(self) -> None:
        if self.profiler is None or self.step != self.profile_step:
            return
        self.profiler.__exit__(None, None, None)
        rank = int(os.environ.get("RANK", "0"))
        table = self.profiler.key_averages().table(sort_by="self_cpu_time_total",
                                                   row_limit=self.rows)
        print(f"== op table of step {self.step}, rank {rank} ==\n{table}", flush=True)
        if self.stack_of:
            # where the named op's time comes from: its calls grouped by Python call site
            averages = self.profiler.key_averages(group_by_stack_n=6)
            sites = sorted((e for e in averages if e.key == self.stack_of),
                           key=lambda e: -e.self_cpu_time_total)[:8]
            for event in sites:
                print(f"-- {self.stack_of} {event.self_cpu_time_total / 1e3:.1f} ms in "
                      f"{event.count} calls from:\n   " + "\n   ".join(event.stack), flush=True)
        self.profiler = None

    def close(self) -> None:
        self.profiler = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile-step", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--stack-of", default="", help="also print the call sites of this op")
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags

    sys.path.insert(0, str(REPO_ROOT))
    import megatron.training.profiler as step_profiler

    step_profiler.StepProfiler = (  # the run builds its profiler through this name
        lambda *_, **__: OpTableProfiler(args.profile_step, args.rows, args.stack_of))
    script = str(REPO_ROOT / "pretrain_gpt.py")
    sys.argv = [script, *flags, "--profile", "pt", "--profile_steps",
                f"{args.profile_step},{args.profile_step}"]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
