"""The DeepSpeed engines: the only module that calls `deepspeed.initialize`.

`TrainingEngine` hides the difference between the ZeRO engine driving `GPTModel`
(--no-pipeline-parallel: forward/backward/step per micro batch) and the pipeline engine
driving `GPTModelPipe` (`train_batch` / `eval_batch` over all micro batches).
"""
import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.training.batch import get_batch, masked_mean_loss
from megatron.core import parallel_state
from megatron.core.utils import print_rank_0
from megatron.training.model_stats import GradZeroCounter, params_l2_norm
from megatron.training.nonfinite import NonFiniteStepGuard
from megatron.training.timers import Timers
from megatron.training import zero_grad_norm


@dataclass
class StepResult:
    """What one training iteration reports."""

    loss: float
    """Mean loss over the global batch (averaged over data-parallel ranks)."""
    skipped: bool
    """True when no update was applied (non-finite gradients, or an fp16 overflow)."""
    grad_norm: Optional[float]
    loss_scale: Optional[float]
    num_zeros_in_grad: Optional[int] = None
    """Zero gradient entries of the whole model right before the step (--log-num-zeros-in-grad)."""
    params_norm: Optional[float] = None
    """L2 norm of all parameters after the step (--log-params-norm)."""


@dataclass(frozen=True)
class BatchOptions:
    """How micro batches are turned into model inputs (the data flags)."""

    eod_token: int
    reset_position_ids: bool
    reset_attention_mask: bool
    eod_mask_loss: bool


def step_outcome(engine: Any, *, guard_skipped: bool) -> Tuple[bool, Optional[float], Optional[float]]:
    """(skipped, grad norm, loss scale) of the step the DeepSpeed `engine` just finished.

    Skipped: the non-finite guard refused it, or DeepSpeed applied no update (an fp16
    overflow). A skipped step reports no grad norm. The loss scale is reported with fp16 only:
    it is the value after the step, already lowered when the step overflowed.
    """
    skipped = guard_skipped or not engine.was_step_applied()
    grad_norm = engine.get_global_grad_norm()
    if torch.is_tensor(grad_norm):
        grad_norm = grad_norm.item()
    loss_scale = None
    if engine.fp16_enabled():
        # Every DeepSpeed fp16 optimizer (ZeRO 0-3) has `loss_scale`; older ones `cur_scale`.
        optimizer = engine.optimizer
        scale = getattr(optimizer, "loss_scale", None)
        scale = getattr(optimizer, "cur_scale", None) if scale is None else scale
        loss_scale = None if scale is None else float(scale)
    return skipped, None if grad_norm is None or skipped else float(grad_norm), loss_scale


class TrainingEngine:
    """A DeepSpeed engine plus the step logic for its kind."""

    def __init__(self, model: torch.nn.Module, *, optimizer: torch.optim.Optimizer,
                 ds_config: Dict[str, Any], pipeline: bool, batch_options: BatchOptions,
                 timers: Optional[Timers] = None, log_params_norm: bool = False,
                 log_num_zeros_in_grad: bool = False) -> None:
        import deepspeed

        self.timers = timers or Timers(log_level=0, log_option="minmax", barrier_with_level_1=False)
        self.pipeline = pipeline
        self.batch_options = batch_options
        self.guard = NonFiniteStepGuard(optimizer)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=copy.deepcopy(ds_config),
            mpu=None if pipeline else parallel_state.get_mpu(), dist_init_required=False)
        if pipeline:
            self.engine.set_batch_fn(self._pipe_batch)
        zero_grad_norm.use_chunked_grad_norm(self.engine.optimizer)
        if self.engine.zero_cpu_offload():
            print_rank_0(f"> ZeRO-Offload: the optimizer state and step are on the CPU "
                         f"({type(optimizer).__name__})")
        self.log_params_norm = log_params_norm
        # The gradients are only complete (and, under ZeRO, partitioned) inside the step.
        self.zero_counter = (GradZeroCounter(self.engine.optimizer, self.engine.module)
                             if log_num_zeros_in_grad else None)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.engine.gradient_accumulation_steps()

    @property
    def global_batch_size(self) -> int:
        return self.engine.train_batch_size()

    def set_global_batch_size(self, global_batch_size: int) -> None:
        """Change the global batch (more or fewer micro batches; --rampup-batch-size)."""
        if global_batch_size != self.global_batch_size:
            self.engine.set_train_batch_size(global_batch_size)

    def _batch(self, data_iterator: Optional[Iterator]) -> Dict[str, torch.Tensor]:
        options = self.batch_options
        return get_batch(data_iterator, eod_token=options.eod_token,
                         reset_position_ids=options.reset_position_ids,
                         reset_attention_mask=options.reset_attention_mask,
                         eod_mask_loss=options.eod_mask_loss)

    def _pipe_batch(self, data: Optional[Dict[str, torch.Tensor]]):
        """batch_fn of the pipeline engine: raw loader batch -> (inputs, labels)."""
        batch = self._batch(iter([data]) if data is not None else None)
        return ((batch["tokens"], batch["position_ids"], batch["attention_mask"]),
                (batch["labels"], batch["loss_mask"]))

    def _forward_loss(self, data_iterator: Optional[Iterator]) -> torch.Tensor:
        batch = self._batch(data_iterator)
        # Plain causal attention needs no mask tensor (lets the attention take its fast path).
        mask = batch["attention_mask"] if self.batch_options.reset_attention_mask else None
        per_token = self.engine(batch["tokens"], batch["position_ids"], mask,
                                labels=batch["labels"])
        return masked_mean_loss(per_token, batch["loss_mask"],
                                sequence_parallel_group=parallel_state.get_sequence_parallel_group())

    def _average_over_data_parallel(self, value: torch.Tensor) -> float:
        """Mean over data-parallel ranks of the loss summed over sequence-parallel ranks
        (each holds its chunk's share of the whole sequence's mean)."""
        value = value.detach().float().clone()
        if parallel_state.get_sequence_data_parallel_world_size() > 1:
            dist.all_reduce(value, group=parallel_state.get_sequence_data_parallel_group())
            value /= parallel_state.get_data_parallel_world_size()
        return value.item()

    def train_step(self, data_iterator: Optional[Iterator]) -> StepResult:
        timers = self.timers
        if self.zero_counter is not None:
            self.zero_counter.last_count = None
        # An fp16 overflow skips the step before the guarded optimizer runs: no stale verdict.
        self.guard.last_step_skipped = False
        if self.pipeline:
            timers("forward-backward", 1).start(barrier=True)
            loss = self.engine.train_batch(data_iter=data_iterator).item()
            timers("forward-backward", 1).stop()
        else:
            losses = []
            for _ in range(self.gradient_accumulation_steps):
                timers("forward-backward", 1).start(barrier=True)
                timers("forward-compute", 2).start()
                micro_loss = self._forward_loss(data_iterator)
                timers("forward-compute", 2).stop()
                timers("backward-compute", 2).start()
                self.engine.backward(micro_loss)
                timers("backward-compute", 2).stop()
                timers("forward-backward", 1).stop()
                timers("optimizer", 1).start()
                self.engine.step()
                timers("optimizer", 1).stop()
                losses.append(micro_loss.detach())
            loss = self._average_over_data_parallel(torch.stack(losses).mean())
        skipped, grad_norm, loss_scale = step_outcome(self.engine,
                                                      guard_skipped=self.guard.last_step_skipped)
        return StepResult(loss=loss, skipped=skipped, grad_norm=grad_norm, loss_scale=loss_scale,
                          num_zeros_in_grad=(self.zero_counter.last_count
                                             if self.zero_counter is not None else None),
                          params_norm=(params_l2_norm(self.engine.module)
                                       if self.log_params_norm else None))

    @torch.no_grad()
    def eval_step(self, data_iterator: Optional[Iterator]) -> float:
        """Mean loss over one global batch, without updating anything."""
        if self.pipeline:
            loss = self.engine.eval_batch(data_iterator)
            self.engine.module.train()
            return float(loss.item() if torch.is_tensor(loss) else loss)
        self.engine.module.eval()
        try:
            losses = [self._forward_loss(data_iterator)
                      for _ in range(self.gradient_accumulation_steps)]
        finally:
            self.engine.module.train()
        return self._average_over_data_parallel(torch.stack(losses).mean())
