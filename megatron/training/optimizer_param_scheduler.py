"""Learning-rate warmup/decay and weight-decay increment, driven by steps (samples) or tokens.

Semantics follow upstream Megatron: linear warmup from 0 to `max_lr` over `lr_warmup_steps`
(or `lr_warmup_tokens`), then constant, linear, cosine or inverse-square-root decay to
`min_lr` at `lr_decay_steps` (or `lr_decay_tokens`), `min_lr` afterwards. The training loop
calls `step(increment=<global batch size>, token_num=<consumed tokens>)` each iteration, so
"steps" are samples (see `megatron.config.optimizer_param_scheduler_kwargs`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")
WD_INCR_STYLES = ("constant", "linear", "cosine")


class OptimizerParamScheduler:
    """Sets `lr` and `weight_decay` of every optimizer param group (scaled by `lr_mult`/`wd_mult`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, max_lr: float, min_lr: float,
                 lr_warmup_steps: float, lr_decay_steps: float, lr_decay_style: str, start_wd: float,
                 end_wd: float, wd_incr_steps: float, wd_incr_style: str,
                 use_checkpoint_opt_param_scheduler: bool, override_opt_param_scheduler: bool,
                 lr_warmup_tokens: Optional[int] = None, lr_decay_tokens: Optional[int] = None) -> None:
        if lr_decay_style not in DECAY_STYLES:
            raise ValueError(f"--lr-decay-style {lr_decay_style!r} is not one of {DECAY_STYLES}")
        if wd_incr_style not in WD_INCR_STYLES:
            raise ValueError(f"--weight-decay-incr-style {wd_incr_style!r} is not one of {WD_INCR_STYLES}")
        if not 0.0 <= min_lr <= max_lr:
            raise ValueError(f"need 0 <= min_lr ({min_lr}) <= max_lr ({max_lr})")
        if lr_decay_steps <= 0:
            raise ValueError(f"lr_decay_steps must be positive, got {lr_decay_steps}")
        if lr_decay_tokens is None and not 0 <= lr_warmup_steps < lr_decay_steps:
            raise ValueError(f"need 0 <= lr_warmup_steps ({lr_warmup_steps}) < lr_decay_steps ({lr_decay_steps})")
        if not 0.0 <= start_wd <= end_wd:
            raise ValueError(f"need 0 <= start_wd ({start_wd}) <= end_wd ({end_wd})")
        if wd_incr_style == "constant" and start_wd != end_wd:
            raise ValueError(f"constant weight decay needs start_wd == end_wd, got {start_wd} and {end_wd}")
        if override_opt_param_scheduler and use_checkpoint_opt_param_scheduler:
            raise ValueError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are "
                             "mutually exclusive")
        self.optimizer = optimizer
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_decay_steps = lr_decay_steps
        self.lr_decay_style = lr_decay_style
        self.lr_warmup_tokens = lr_warmup_tokens
        self.lr_decay_tokens = lr_decay_tokens
        self.start_wd = start_wd
        self.end_wd = end_wd
        self.wd_incr_steps = wd_incr_steps
        self.wd_incr_style = wd_incr_style
        self.override_opt_param_scheduler = override_opt_param_scheduler
        self.use_checkpoint_opt_param_scheduler = use_checkpoint_opt_param_scheduler
        self.num_steps = 0
        self.num_tokens = 0
        # Token count when a step-based warmup ended, where a token-based decay starts.
        self.warmup_end_tokens: Optional[int] = None
        self.step(0)

    def get_wd(self) -> float:
        """Weight decay at the current step."""
        if self.num_steps > self.wd_incr_steps or self.wd_incr_style == "constant":
            return self.end_wd
        ratio = float(self.num_steps) / float(self.wd_incr_steps)
        if self.wd_incr_style == "linear":
            coeff = ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * (1.0 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    def _decay_start_tokens(self) -> int:
        if self.lr_warmup_tokens is not None:
            return self.lr_warmup_tokens
        return self.warmup_end_tokens or 0

    def get_lr(self) -> float:
        """Learning rate at the current step / token count."""
        if self.lr_warmup_tokens is None:
            if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
                return self.max_lr * float(self.num_steps) / float(self.lr_warmup_steps)
        elif self.lr_warmup_tokens > 0 and self.num_tokens <= self.lr_warmup_tokens:
            return self.max_lr * float(self.num_tokens) / float(self.lr_warmup_tokens)
        if self.lr_decay_style == "constant":
            return self.max_lr
        by_tokens = self.lr_decay_tokens is not None
        if by_tokens and self.num_tokens > self.lr_decay_tokens:
            return self.min_lr
        if not by_tokens and self.num_steps > self.lr_decay_steps:
            return self.min_lr
        if self.lr_decay_style == "inverse-square-root":
            if self.lr_warmup_tokens is not None:
                warmup, now = max(self.lr_warmup_tokens, 1), max(self.num_tokens, 1)
            else:
                warmup, now = max(self.lr_warmup_steps, 1), max(self.num_steps, 1)
            return max(self.min_lr, self.max_lr * math.sqrt(warmup) / math.sqrt(now))
        if by_tokens:
            start = self._decay_start_tokens()
            ratio = float(self.num_tokens - start) / float(self.lr_decay_tokens - start)
        else:
            ratio = float(self.num_steps - self.lr_warmup_steps) / float(self.lr_decay_steps - self.lr_warmup_steps)
        ratio = min(max(ratio, 0.0), 1.0)
        if self.lr_decay_style == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int, token_num: Optional[int] = None) -> None:
        """Advance by `increment` steps (samples), record the consumed tokens, update the groups."""
        if token_num is not None:
            self.num_tokens = token_num
        self.num_steps += increment
        if (self.lr_warmup_tokens is None and self.lr_decay_tokens is not None
                and self.warmup_end_tokens is None and self.num_steps >= self.lr_warmup_steps):
            self.warmup_end_tokens = self.num_tokens
        new_lr, new_wd = self.get_lr(), self.get_wd()
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = new_wd * group.get("wd_mult", 1.0)

    def state_dict(self) -> Dict[str, Any]:
        """Upstream's keys, plus `warmup_end_tokens` (step warmup followed by token decay)."""
        return {
            "max_lr": self.max_lr, "lr_warmup_steps": self.lr_warmup_steps,
            "lr_warmup_tokens": self.lr_warmup_tokens, "num_steps": self.num_steps,
            "num_tokens": self.num_tokens, "lr_decay_style": self.lr_decay_style,
            "lr_decay_steps": self.lr_decay_steps, "lr_decay_tokens": self.lr_decay_tokens,
            "min_lr": self.min_lr, "start_wd": self.start_wd, "end_wd": self.end_wd,
            "wd_incr_style": self.wd_incr_style, "wd_incr_steps": self.wd_incr_steps,
            "warmup_end_tokens": self.warmup_end_tokens,
        }

    def _check_and_set(self, own: Any, saved: Any, name: str) -> Any:
        """Flags win with override; the checkpoint wins with use-checkpoint; otherwise they must agree."""
        if self.override_opt_param_scheduler:
            return own
        if not self.use_checkpoint_opt_param_scheduler and own != saved:
            raise ValueError(
                f"OptimizerParamScheduler: {name} is {own!r} from the flags but {saved!r} in the checkpoint; "
                "pass --override-opt_param-scheduler to keep the flags or "
                "--use-checkpoint-opt_param-scheduler to keep the checkpoint")
        return saved

    @staticmethod
    def _saved(sd: Dict[str, Any], *keys: str) -> Any:
        for key in keys:
            if key in sd:
                return sd[key]
        raise KeyError(f"scheduler state has none of {keys}")

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore progress; reconcile settings per override/use-checkpoint (older key names accepted)."""
        self.max_lr = self._check_and_set(self.max_lr, self._saved(sd, "start_lr", "max_lr"), "learning rate")
        self.min_lr = self._check_and_set(self.min_lr, sd["min_lr"], "minimum learning rate")
        self.lr_warmup_steps = self._check_and_set(
            self.lr_warmup_steps, self._saved(sd, "warmup_iter", "warmup_steps", "lr_warmup_steps"),
            "warmup steps")
        self.lr_decay_steps = self._check_and_set(
            self.lr_decay_steps, self._saved(sd, "end_iter", "decay_steps", "lr_decay_steps"), "decay steps")
        self.lr_decay_style = self._check_and_set(
            self.lr_decay_style, self._saved(sd, "decay_style", "lr_decay_style"), "learning rate decay style")
        if any(key in sd for key in ("warmup_tokens", "lr_warmup_tokens")):
            self.lr_warmup_tokens = self._check_and_set(
                self.lr_warmup_tokens, self._saved(sd, "warmup_tokens", "lr_warmup_tokens"), "warmup tokens")
        if any(key in sd for key in ("decay_tokens", "lr_decay_tokens")):
            self.lr_decay_tokens = self._check_and_set(
                self.lr_decay_tokens, self._saved(sd, "decay_tokens", "lr_decay_tokens"), "decay tokens")
        if "start_wd" in sd:
            self.start_wd = self._check_and_set(self.start_wd, sd["start_wd"], "start weight decay")
            self.end_wd = self._check_and_set(self.end_wd, sd["end_wd"], "end weight decay")
            self.wd_incr_steps = self._check_and_set(self.wd_incr_steps, sd["wd_incr_steps"],
                                                     "weight decay increment steps")
            self.wd_incr_style = self._check_and_set(self.wd_incr_style, sd["wd_incr_style"],
                                                     "weight decay increment style")
        self.warmup_end_tokens = sd.get("warmup_end_tokens")
        self.num_steps = 0
        self.step(self._saved(sd, "num_iters", "num_steps"), token_num=sd.get("num_tokens", self.num_tokens))
