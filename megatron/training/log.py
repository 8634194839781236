"""What a run logs: upstream-format lines, the tensorboard scalars, and the optional writer.

The line formats and field names are Megatron-DeepSpeed's, so that users' log parsers and
plotting scripts keep working; the fields we add (tokens per second per device, MFU) come
after upstream's.
"""
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from megatron.core.utils import print_rank_last
from megatron.training.flops import training_flops_per_iteration
from megatron.training.memory import max_over_ranks, peak_memory_bytes

if TYPE_CHECKING:  # the context holds a writer from this module
    from megatron.training.context import RunContext


@dataclass
class IterationReport:
    """What one log line reports, averaged over the iterations since the last line."""

    iteration: int
    train_iters: int
    consumed_samples: int
    consumed_tokens: int
    elapsed_ms_per_iteration: float
    learning_rate: float
    global_batch_size: int
    lm_loss: Optional[float]
    loss_scale: Optional[float]
    grad_norm: Optional[float]
    seq_length: int
    skipped_iterations: int
    nan_iterations: int
    samples_per_second: float
    tflops_per_device: float
    tokens_per_second_per_device: float
    mfu: Optional[float]
    peak_memory_bytes: Optional[int] = None
    """The largest peak memory of all ranks (accelerator memory on GPU, RSS on CPU)."""
    eta_seconds: Optional[float] = None
    """Estimated time to finish: mean step time x iterations left."""
    num_zeros_in_grad: Optional[float] = None
    """--log-num-zeros-in-grad: zero gradient entries of the last iteration."""
    params_norm: Optional[float] = None
    """--log-params-norm: L2 norm of all parameters after the last iteration."""


def format_iteration_line(report: IterationReport) -> str:
    """One training log line in Megatron-DeepSpeed's format."""
    parts = [
        f" iteration {report.iteration:8d}/{report.train_iters:8d} |",
        f" consumed samples: {report.consumed_samples:12d} |",
        f" consumed tokens: {report.consumed_tokens:12d} |",
        f" elapsed time per iteration (ms): {report.elapsed_ms_per_iteration:.1f} |",
        f" learning rate: {report.learning_rate:.3E} |",
        f" global batch size: {report.global_batch_size:5d} |",
    ]
    if report.lm_loss is not None:
        parts.append(f" lm loss: {report.lm_loss:.6E} |")
    if report.loss_scale is not None:
        parts.append(f" loss scale: {report.loss_scale:.1f} |")
    if report.grad_norm is not None:
        parts.append(f" grad norm: {report.grad_norm:.3f} |")
    if report.num_zeros_in_grad is not None:
        parts.append(f" num zeros: {report.num_zeros_in_grad:.1f} |")
    if report.params_norm is not None:
        parts.append(f" params norm: {report.params_norm:.3f} |")
    parts += [
        f" actual seqlen: {report.seq_length:5d} |",
        f" number of skipped iterations: {report.skipped_iterations:3d} |",
        f" number of nan iterations: {report.nan_iterations:3d} |",
        f" samples per second: {report.samples_per_second:.3f} |",
        f" TFLOPs: {report.tflops_per_device:.2f} |",
        f" tokens per second per device: {report.tokens_per_second_per_device:.1f} |",
    ]
    if report.mfu is not None:
        parts.append(f" MFU: {100.0 * report.mfu:.1f}% |")
    if report.peak_memory_bytes is not None:
        parts.append(f" peak memory (GiB): {report.peak_memory_bytes / 2 ** 30:.2f} |")
    if report.eta_seconds is not None:
        parts.append(f" ETA: {format_duration(report.eta_seconds)} |")
    return "".join(parts)


def format_duration(seconds: float) -> str:
    """`H:MM:SS` (hours may exceed 24), rounded to the second."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def iterations_left(*, iteration: int, train_iters: int, consumed_tokens: int,
                    train_tokens: Optional[int], tokens_per_iteration: int) -> int:
    """Iterations until the first stop condition: --train-iters/--train-samples, or
    --train-tokens when it comes first."""
    left = max(train_iters - iteration, 0)
    if train_tokens is not None and tokens_per_iteration > 0:
        tokens_left = max(train_tokens - consumed_tokens, 0)
        left = min(left, -(-tokens_left // tokens_per_iteration))
    return left


def perplexity(loss: float) -> float:
    """exp(loss), capped as upstream does so a diverged run prints a number."""
    return math.exp(min(20.0, loss))


def format_evaluation_line(prefix: str, lm_loss: float) -> str:
    """`validation loss at <prefix> | lm loss value: ... | lm loss PPL: ... |`"""
    return (f" validation loss at {prefix} | lm loss value: {lm_loss:.6E} | "
            f"lm loss PPL: {perplexity(lm_loss):.6E} | ")


class TensorboardWriter:
    """Thin wrapper over torch's SummaryWriter, created only when --tensorboard-dir is set."""

    def __init__(self, log_dir: str, *, queue_size: int = 1000) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("--tensorboard-dir needs the tensorboard package "
                              "(pip install tensorboard)") from error
        self._writer = SummaryWriter(log_dir=log_dir, max_queue=queue_size)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ScalarWriters:
    """Several writers (tensorboard, wandb) behind the one `add_scalar` interface."""

    def __init__(self, writers) -> None:
        self._writers = list(writers)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for writer in self._writers:
            writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@dataclass
class LogInterval:
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


def log_iteration(context: "RunContext", interval: LogInterval) -> None:
    """Print the iteration line (last rank). Collective: every rank calls it (peak memory is
    the largest of all ranks)."""
    config, state = context.config, context.state
    elapsed = max(time.monotonic() - interval.start_time, 1e-9)
    seconds_per_iteration = elapsed / max(interval.iterations, 1)
    global_batch = context.current_global_batch_size()
    seq_length = config.data.seq_length
    world_size = config.parallel.world_size
    flops = training_flops_per_iteration(config.model, global_batch_size=global_batch,
                                         seq_length=seq_length)
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
        num_zeros_in_grad=context.last_result.num_zeros_in_grad if context.last_result else None,
        params_norm=context.last_result.params_norm if context.last_result else None,
        seq_length=seq_length, skipped_iterations=interval.skipped,
        nan_iterations=interval.nonfinite,
        samples_per_second=global_batch / seconds_per_iteration,
        tflops_per_device=tflops_per_device,
        tokens_per_second_per_device=global_batch * seq_length / seconds_per_iteration / world_size,
        mfu=(tflops_per_device / config.logging.peak_tflops_per_device
             if config.logging.peak_tflops_per_device else None),
        peak_memory_bytes=max_over_ranks(peak_memory_bytes()),
        eta_seconds=seconds_per_iteration * iterations_left(
            iteration=state.iteration, train_iters=config.schedule.train_iters,
            consumed_tokens=state.consumed_train_tokens, train_tokens=config.schedule.train_tokens,
            tokens_per_iteration=global_batch * seq_length))
    print_rank_last(format_iteration_line(report))


def write_tensorboard(context: "RunContext", *, loss: float, global_batch: int,
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
    for name, value in (("num-zeros", result.num_zeros_in_grad if result else None),
                        ("params-norm", result.params_norm if result else None)):
        if value is not None:
            scalars[f"{name}/{name}"] = (value, step)
            scalars[f"{name}/{name} vs samples"] = (value, state.consumed_train_samples)
            scalars[f"{name}/{name} vs tokens"] = (value, state.consumed_train_tokens)
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
        from megatron.training.optimizer_stats import optimizer_state_norms

        norms = optimizer_state_norms(context.engine.engine.optimizer,
                                      zero_partitioned=config.parallel.zero_stage >= 1)
        scalars.update({tag: (value, step) for tag, value in norms.items()})
    if context.writer is not None:
        for tag, (value, at) in scalars.items():
            context.writer.add_scalar(tag, value, at)
