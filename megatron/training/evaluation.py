"""Evaluation on the validation and test splits, with upstream's log lines and scalars."""
from typing import Optional

from megatron.core.utils import print_rank_last
from megatron.training.context import RunContext
from megatron.training.log import format_evaluation_line, perplexity


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
