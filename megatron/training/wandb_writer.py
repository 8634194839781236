"""`--wandb-project` / `--wandb-exp-name` / `--wandb-save-dir`: the tensorboard scalars, also
sent to Weights & Biases from the last rank (as upstream). `wandb` is an optional package;
`WANDB_MODE=offline` keeps the run on disk for a later `wandb sync`."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

# Scalars whose x axis is not the iteration (upstream's "... vs samples" / "... vs tokens").
_CUSTOM_AXES = ((" vs samples", "samples"), (" vs tokens", "tokens"))


class WandbWriter:
    """`add_scalar(tag, value, step)` like tensorboard's writer: a scalar at an iteration is
    logged at that wandb step; a scalar against samples or tokens goes on its own axis
    (wandb's steps must only grow)."""

    def __init__(self, *, project: Optional[str], name: Optional[str], save_dir: str,
                 run_config: Dict[str, Any]) -> None:
        import wandb

        os.makedirs(save_dir, exist_ok=True)
        self._run = wandb.init(project=project or None, name=name or None, dir=save_dir,
                               config=run_config)
        self._iteration = 0
        self._defined = set()

    def _axis(self, tag: str) -> Optional[str]:
        for suffix, axis in _CUSTOM_AXES:
            if tag.endswith(suffix):
                return axis
        return None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        axis = self._axis(tag)
        if axis is None:
            self._iteration = max(self._iteration, step)
            self._run.log({tag: value}, step=step)
            return
        if tag not in self._defined:
            self._run.define_metric(axis)
            self._run.define_metric(tag, step_metric=axis)
            self._defined.add(tag)
        self._run.log({tag: value, axis: step}, step=self._iteration)

    def flush(self) -> None:
        """wandb sends in the background; nothing to force."""

    def close(self) -> None:
        self._run.finish()
