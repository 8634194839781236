"""The pretraining run: set-up, the training loop, evaluation and logging."""
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch.distributed as dist

from megatron.config.schema import TrainingConfig
from megatron.engine import StepResult
from megatron.flops import ModelShape, training_flops_per_iteration
from megatron.train_state import TrainState
from megatron.training_log import (IterationReport, TensorboardWriter, format_evaluation_line,
                                   format_iteration_line, perplexity)


class TrainingError(RuntimeError):
    """The run cannot go on (for example the loss stayed non-finite); the message says why."""


def print_rank_last(message: str) -> None:
    """Upstream prints training lines from the last rank (it holds the loss in a pipeline)."""
    if not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1:
        print(message, flush=True)


def print_rank_0(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


@dataclass
class _Interval:
    """Accumulates what the next log line averages."""

    start_time: float = field(default_factory=time.monotonic)
    iterations: int = 0
    loss_sum: float = 0.0
    losses_counted: int = 0
    skipped: int = 0
    nonfinite: int = 0

    def add(self, loss: float, skipped: bool) -> None:
        self.iterations += 1
        if not math.isfinite(loss):
            self.nonfinite += 1
        elif not skipped:
            self.loss_sum += loss
            self.losses_counted += 1
        if skipped:
            self.skipped += 1


@dataclass
class RunContext:
    """Everything the loop needs, built once by `setup`."""

    config: TrainingConfig
    engine: "object"
    scheduler: "object"
    state: TrainState
    iterators: "object"
    model_shape: ModelShape
    writer: Optional[TensorboardWriter] = None
    peak_tflops_per_device: Optional[float] = None
    on_iteration_end: List[Callable[["RunContext"], bool]] = field(default_factory=list)
    """Hooks run after every iteration (checkpointing, exit conditions); True stops the run."""
    last_result: Optional[StepResult] = None
    """The latest iteration's step result (its grad norm and loss scale are logged)."""
    batch_sizes: Optional["object"] = None
    """The micro-batch calculator (`megatron.microbatches`): the global batch of the next
    iteration from the consumed samples (constant, or growing with --rampup-batch-size)."""
    checkpointer: Optional["object"] = None
    """The run's `megatron.checkpointing.Checkpointer` (saves only with --save)."""
    stop_reason: Optional[str] = None
    """Why a hook stopped the run early (an exit condition), or None."""


def model_shape_of(transformer_config) -> ModelShape:
    return ModelShape(
        num_layers=transformer_config.num_layers, hidden_size=transformer_config.hidden_size,
        ffn_hidden_size=transformer_config.ffn_hidden_size,
        num_attention_heads=transformer_config.num_attention_heads,
        num_key_value_heads=transformer_config.num_key_value_heads,
        kv_channels=transformer_config.kv_channels,
        padded_vocab_size=transformer_config.padded_vocab_size,
        swiglu=transformer_config.activation == "swiglu")


def _recompute_granularity(config: TrainingConfig) -> str:
    checkpointing = config.activation_checkpointing
    if checkpointing.recompute_granularity:
        return checkpointing.recompute_granularity
    return "full" if checkpointing.checkpoint_activations else "none"


def _log_iteration(context: RunContext, interval: _Interval) -> None:
    config, state = context.config, context.state
    elapsed = max(time.monotonic() - interval.start_time, 1e-9)
    seconds_per_iteration = elapsed / max(interval.iterations, 1)
    global_batch = _current_global_batch_size(context)
    seq_length = config.data.seq_length
    world_size = config.parallel.world_size
    flops = training_flops_per_iteration(context.model_shape, global_batch_size=global_batch,
                                         seq_length=seq_length,
                                         recompute_granularity=_recompute_granularity(config))
    tflops_per_device = flops / seconds_per_iteration / world_size / 1e12
    report = IterationReport(
        iteration=state.iteration, train_iters=config.schedule.train_iters,
        consumed_samples=state.consumed_train_samples, consumed_tokens=state.consumed_train_tokens,
        elapsed_ms_per_iteration=1000.0 * seconds_per_iteration,
        learning_rate=context.scheduler.get_lr(),
        global_batch_size=global_batch,
        lm_loss=interval.loss_sum / interval.losses_counted if interval.losses_counted else None,
        loss_scale=context.last_result.loss_scale if context.last_result else None,
        grad_norm=context.last_result.grad_norm if context.last_result else None,
        seq_length=seq_length, skipped_iterations=interval.skipped,
        nan_iterations=interval.nonfinite,
        samples_per_second=global_batch / seconds_per_iteration,
        tflops_per_device=tflops_per_device,
        tokens_per_second_per_device=global_batch * seq_length / seconds_per_iteration / world_size,
        mfu=(tflops_per_device / context.peak_tflops_per_device
             if context.peak_tflops_per_device else None))
    print_rank_last(format_iteration_line(report))


def _write_tensorboard(context: RunContext, *, loss: float, global_batch: int,
                       seconds: float) -> None:
    """Upstream's scalars for one iteration (every --tensorboard-log-interval iterations).

    Optimizer-state norms are reduced over ranks, so every rank takes part; only the rank
    holding the writer writes.
    """
    config, state = context.config, context.state
    logging = config.logging
    step = state.iteration
    scalars = {}
    if math.isfinite(loss):
        scalars["lm-loss-training/lm loss"] = (loss, step)
        scalars["lm-loss-training/lm loss vs samples"] = (loss, state.consumed_train_samples)
        scalars["lm-loss-training/lm loss vs tokens"] = (loss, state.consumed_train_tokens)
    if logging.log_learning_rate_to_tensorboard:
        scalars["learning-rate/learning-rate"] = (context.scheduler.get_lr(), step)
    result = context.last_result
    if logging.log_loss_scale_to_tensorboard and result is not None and result.loss_scale is not None:
        scalars["loss-scale/loss-scale"] = (result.loss_scale, step)
    if result is not None and result.grad_norm is not None:
        scalars["grad-norm/grad-norm"] = (result.grad_norm, step)
    if logging.log_batch_size_to_tensorboard:
        scalars["batch-size/batch-size"] = (global_batch, step)
    if logging.log_timers_to_tensorboard:
        scalars["iteration-time/iteration-time"] = (seconds, step)
    if logging.log_world_size_to_tensorboard:
        scalars["world-size/world-size"] = (config.parallel.world_size, step)
    if logging.log_memory_to_tensorboard:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        scalars["mem-reserved-bytes"] = (accelerator.memory_reserved(), step)
        scalars["mem-allocated-bytes"] = (accelerator.memory_allocated(), step)
        scalars["mem-max-allocated-bytes"] = (accelerator.max_memory_allocated(), step)
    if logging.log_optimizer_states_to_tensorboard:
        from megatron.optimizer_stats import optimizer_state_norms

        norms = optimizer_state_norms(context.engine.engine.optimizer,
                                      zero_partitioned=config.parallel.zero_stage >= 1)
        scalars.update({tag: (value, step) for tag, value in norms.items()})
    if context.writer is not None:
        for tag, (value, at) in scalars.items():
            context.writer.add_scalar(tag, value, at)


def _current_global_batch_size(context: RunContext) -> int:
    if context.batch_sizes is None:
        return context.config.batch.global_batch_size
    return context.batch_sizes.get_current_global_batch_size()


def evaluate(context: RunContext, iterator, *, prefix: str, test: bool = False) -> Optional[float]:
    """Mean loss over --eval-iters full global batches; prints upstream's validation line."""
    config = context.config
    if config.schedule.eval_iters <= 0:
        return None
    engine = context.engine
    training_batch = getattr(engine, "global_batch_size", None)
    if training_batch is not None:
        engine.set_global_batch_size(config.batch.global_batch_size)
    try:
        losses = [engine.eval_step(iterator) for _ in range(config.schedule.eval_iters)]
    finally:
        if training_batch is not None:
            engine.set_global_batch_size(training_batch)
    if not test:
        context.state.consumed_valid_samples += (config.schedule.eval_iters
                                                 * config.batch.global_batch_size)
    loss = sum(losses) / len(losses)
    line = format_evaluation_line(prefix, loss)
    print_rank_last("-" * (len(line) + 1))
    print_rank_last(line)
    print_rank_last("-" * (len(line) + 1))
    if context.writer is not None:
        kind = "test" if test else "validation"
        step = context.state.iteration
        context.writer.add_scalar(f"lm-loss-validation/lm loss {kind}", loss, step)
        if config.logging.log_validation_ppl_to_tensorboard:
            context.writer.add_scalar(f"lm-loss-validation/lm loss {kind} ppl", perplexity(loss),
                                      step)
    return loss


def _training_done(context: RunContext) -> bool:
    config, state = context.config, context.state
    if state.iteration >= config.schedule.train_iters:
        return True
    train_tokens = config.schedule.train_tokens
    return train_tokens is not None and state.consumed_train_tokens >= train_tokens


def train(context: RunContext, *, max_consecutive_nonfinite: int = 10) -> None:
    """Run iterations until a stop condition; evaluate every --eval-interval."""
    config, state = context.config, context.state
    interval = _Interval()
    while not _training_done(context):
        if context.batch_sizes is not None:
            context.batch_sizes.update(state.consumed_train_samples)
            context.engine.set_global_batch_size(_current_global_batch_size(context))
        global_batch = _current_global_batch_size(context)
        iteration_start = time.monotonic()
        result = context.engine.train_step(context.iterators.train)
        context.last_result = result
        state.iteration += 1
        state.consumed_train_samples += global_batch
        state.consumed_train_tokens += global_batch * config.data.seq_length
        interval.add(result.loss, result.skipped)
        if result.skipped:
            state.skipped_iterations += 1
        else:
            context.scheduler.step(increment=global_batch, token_num=state.consumed_train_tokens)
        if math.isfinite(result.loss):
            state.consecutive_nan_iterations = 0
        else:
            state.nan_iterations += 1
            state.consecutive_nan_iterations += 1
            print_rank_last(f" non-finite loss ({result.loss}) at iteration {state.iteration}: "
                            f"update skipped ({state.consecutive_nan_iterations} in a row)")
            if state.consecutive_nan_iterations >= max_consecutive_nonfinite:
                raise TrainingError(
                    f"the loss was non-finite for {state.consecutive_nan_iterations} consecutive "
                    f"iterations (up to iteration {state.iteration}); stopping. Lower --lr, check "
                    f"the data, or use --bf16 instead of --fp16")
        if (config.logging.tensorboard_dir
                and state.iteration % config.logging.tensorboard_log_interval == 0):
            _write_tensorboard(context, loss=result.loss, global_batch=global_batch,
                               seconds=time.monotonic() - iteration_start)
        if state.iteration % config.logging.log_interval == 0:
            _log_iteration(context, interval)
            timers = getattr(context.engine, "timers", None)
            report = timers.report(normalizer=interval.iterations) if timers is not None else None
            if report is not None:
                print_rank_last(report)
            interval = _Interval()
        if (config.schedule.eval_interval and state.iteration % config.schedule.eval_interval == 0
                and context.iterators.has_valid):
            evaluate(context, context.iterators.valid, prefix=f"iteration {state.iteration}")
        if any(hook(context) for hook in context.on_iteration_end):
            break


def parallel_layout_summary(config: TrainingConfig) -> str:
    parallel = config.parallel
    return (f"world size {parallel.world_size}: tensor parallel {parallel.tensor_model_parallel_size}"
            f" x pipeline parallel {parallel.pipeline_model_parallel_size}"
            f" x data parallel {parallel.data_parallel_size}"
            f" ({'pipeline engine' if parallel.pipeline_engine else 'ZeRO engine, no pipeline'},"
            f" ZeRO stage {parallel.zero_stage}, {config.precision.dtype})")
