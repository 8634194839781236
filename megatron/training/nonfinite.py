"""Skip optimizer steps whose gradients are not finite, on every rank at once.

DeepSpeed skips steps only for fp16 overflow. In fp32/bf16 a NaN/Inf loss would poison the
weights, so the client optimizer's `step` is wrapped: every rank checks its own gradients
(under ZeRO, its partition), the verdict is max-reduced over the world, and all ranks skip
together. The reduction goes through `deepspeed.comm`, like DeepSpeed's own: on CPU, a
torch.distributed collective issued between DeepSpeed's made its gradient-norm all-reduce
return a wrong value under tensor parallelism (seen with DeepSpeed 0.19.8). Every engine calls the optimizer's step on every rank at the same point, so the
collective always matches up.
"""
from typing import Optional

import torch
import torch.distributed as dist


class NonFiniteStepGuard:
    """Wraps `optimizer.step`; `last_step_skipped` tells the training loop what happened."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, group: Optional[object] = None) -> None:
        self.optimizer = optimizer
        self.group = group
        self.last_step_skipped = False
        self._step = optimizer.step
        optimizer.step = self._guarded_step

    def _local_gradients_finite(self) -> torch.Tensor:
        grads = [param.grad for group in self.optimizer.param_groups for param in group["params"]
                 if param.grad is not None]
        if not grads:
            return torch.tensor(True)
        norms = torch._foreach_norm(grads)
        return torch.isfinite(torch.stack([norm.float().cpu() for norm in norms]).sum())

    def _guarded_step(self, *args, **kwargs):
        bad = (~self._local_gradients_finite()).float().reshape(1)
        if dist.is_available() and dist.is_initialized():
            import deepspeed.comm as ds_dist
            from deepspeed.accelerator import get_accelerator

            bad = bad.to(get_accelerator().current_device_name())
            ds_dist.all_reduce(bad, op=ds_dist.ReduceOp.MAX, group=self.group)
        self.last_step_skipped = bool(bad.item() > 0)
        if self.last_step_skipped:
            return None
        return self._step(*args, **kwargs)
