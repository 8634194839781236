"""The training layer: set-up (`pretrain`), the loop, evaluation, logging, the DeepSpeed
engine wrapper, optimizer and schedules, exit conditions and the non-finite guard.

`build_run(config)` builds everything a run needs from the validated configuration and
`run(context)` trains and evaluates; `pretrain_gpt.py` is a thin wrapper around the two.
"""
from megatron.training.context import RunContext
from megatron.training.loop import TrainingError, train
from megatron.training.pretrain import build_run, run

__all__ = ["RunContext", "TrainingError", "build_run", "run", "train"]
