"""Convert the schedule flags into `OptimizerParamScheduler` constructor arguments."""
from __future__ import annotations

from typing import Any, Dict

from megatron.config.schema import TrainingConfig


def optimizer_param_scheduler_kwargs(config: TrainingConfig) -> Dict[str, Any]:
    """Keyword arguments for `OptimizerParamScheduler(optimizer, **kwargs)`.

    As upstream, steps are counted in samples whatever the unit of the flags: iteration
    flags are multiplied by the global batch size, and the training loop calls
    `scheduler.step(increment=<current global batch size>, token_num=<consumed tokens>)`
    once per iteration.
    """
    schedule = config.schedule
    if schedule.train_samples is None:
        samples_per_iter = config.batch.global_batch_size
        decay_steps = (schedule.lr_decay_iters or schedule.train_iters) * samples_per_iter
        wd_incr_steps = schedule.train_iters * samples_per_iter
        warmup_steps = schedule.lr_warmup_iters * samples_per_iter
    else:
        decay_steps = schedule.lr_decay_samples or schedule.train_samples
        wd_incr_steps = schedule.train_samples
        warmup_steps = schedule.lr_warmup_samples
    if schedule.lr_warmup_fraction is not None:
        warmup_steps = schedule.lr_warmup_fraction * decay_steps
    return dict(
        max_lr=schedule.lr, min_lr=schedule.min_lr, lr_warmup_steps=warmup_steps, lr_decay_steps=decay_steps,
        lr_decay_style=schedule.lr_decay_style, start_wd=schedule.start_weight_decay,
        end_wd=schedule.end_weight_decay, wd_incr_steps=wd_incr_steps,
        wd_incr_style=schedule.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=schedule.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=schedule.override_opt_param_scheduler,
        lr_warmup_tokens=schedule.lr_warmup_tokens, lr_decay_tokens=schedule.lr_decay_tokens)
