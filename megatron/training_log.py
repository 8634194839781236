"""Upstream-format log lines and the optional tensorboard writer.

The line formats and field names are Megatron-DeepSpeed's, so that users' log parsers and
plotting scripts keep working; the fields we add (tokens per second per device, MFU) come
after upstream's.
"""
import math
from dataclasses import dataclass
from typing import Optional


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
    return "".join(parts)


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
