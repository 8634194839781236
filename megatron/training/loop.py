"""The training loop: iterations until a stop condition, with logging, evaluation and hooks."""
import math
import time

from megatron.core.utils import print_rank_last
from megatron.training.context import RunContext
from megatron.training.evaluation import evaluate
from megatron.training.log import LogInterval, log_iteration, write_tensorboard


class TrainingError(RuntimeError):
    """The run cannot go on (for example the loss stayed non-finite); the message says why."""


def _training_done(context: RunContext) -> bool:
    config, state = context.config, context.state
    if state.iteration >= config.schedule.train_iters:
        return True
    train_tokens = config.schedule.train_tokens
    return train_tokens is not None and state.consumed_train_tokens >= train_tokens


def train(context: RunContext) -> None:
    """Run iterations until a stop condition; evaluate every --eval-interval."""
    try:
        _train_iterations(context, LogInterval())
    finally:
        if context.profiler is not None:
            context.profiler.close()


def _train_iterations(context: RunContext, interval: LogInterval) -> None:
    config, state = context.config, context.state
    profiler = context.profiler
    while not _training_done(context):
        if context.batch_sizes is not None:
            context.batch_sizes.update(state.consumed_train_samples)
            context.engine.set_global_batch_size(context.current_global_batch_size())
        global_batch = context.current_global_batch_size()
        iteration_start = time.monotonic()
        if profiler is not None:
            profiler.step_begin()
        result = context.engine.train_step(context.iterators.train)
        if profiler is not None:
            profiler.step_end()
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
            if (state.consecutive_nan_iterations
                    >= config.schedule.max_consecutive_nonfinite_iterations):
                raise TrainingError(
                    f"the loss was non-finite for {state.consecutive_nan_iterations} consecutive "
                    f"iterations (up to iteration {state.iteration}); stopping. Lower --lr, check "
                    f"the data, or use --bf16 instead of --fp16")
        if (config.logging.writes_scalars
                and state.iteration % config.logging.tensorboard_log_interval == 0):
            write_tensorboard(context, loss=result.loss, global_batch=global_batch,
                               seconds=time.monotonic() - iteration_start)
        if state.iteration % config.logging.log_interval == 0:
            log_iteration(context, interval)
            timers = getattr(context.engine, "timers", None)
            report = timers.report(normalizer=interval.iterations) if timers is not None else None
            if report is not None:
                print_rank_last(report)
            interval = LogInterval()
        if (config.schedule.eval_interval and state.iteration % config.schedule.eval_interval == 0
                and context.iterators.has_valid):
            evaluate(context, context.iterators.valid, prefix=f"iteration {state.iteration}")
        if any(hook(context) for hook in context.on_iteration_end):
            break


