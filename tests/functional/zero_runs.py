"""The uninterrupted ZeRO runs that several test modules compare against, run once per session."""
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from tests.functional.launch import run_pretrain, tiny_gpt_args

N = 3
"""Iterations before the step a resume starts from; runs are 2N long, saving at N and 2N."""
CASES: Dict[str, Tuple[int, int, List[str]]] = {  # name: (ZeRO stage, ranks, extra flags)
    "zero2-dp2": (2, 2, []),
    "zero3-dp2": (3, 2, []),
    "zero2-tp2-dp2": (2, 4, ["--tensor-model-parallel-size", "2"]),
    "zero3-tp2-dp2": (3, 4, ["--tensor-model-parallel-size", "2"]),
}


def zero_args(dataset: str, stage: int, *extra: str) -> List[str]:
    """The tiny model on the ZeRO engine (--no-pipeline-parallel), 2N iterations, evaluated at N."""
    return tiny_gpt_args(dataset, train_iters=2 * N,
                         extra=["--eval-interval", str(N), "--no-pipeline-parallel",
                                "--zero-stage", str(stage), *extra])


def straight_runner(dataset: str, make_dir: Callable[[str], Path]
                    ) -> Callable[[str], Tuple[Path, str]]:
    """case -> (checkpoint directory, output) of its uninterrupted run, each run once."""
    done: Dict[str, Tuple[Path, str]] = {}

    def run(case: str) -> Tuple[Path, str]:
        if case not in done:
            stage, procs, case_flags = CASES[case]
            directory = make_dir(case) / "checkpoints"
            output = run_pretrain(zero_args(dataset, stage, *case_flags, "--save",
                                            str(directory), "--save-interval", str(N)),
                                  num_procs=procs)
            assert (directory / "latest").read_text() == f"global_step{2 * N}"
            done[case] = directory, output
        return done[case]

    return run
