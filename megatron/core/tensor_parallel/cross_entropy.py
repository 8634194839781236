"""Cross-entropy over logits whose vocabulary dimension is split across TP ranks.

The full logits are never gathered: the max, the softmax normalizer and the target logit
are combined with three all-reduces over the tensor-parallel group.
"""
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.tensor_parallel.utils import VocabUtility


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, label_smoothing):
        group = parallel_state.get_tensor_model_parallel_group()
        world_size = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        logits = vocab_parallel_logits.float()

        logits_max = torch.amax(logits, dim=-1)
        if world_size > 1:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        logits = logits - logits_max.unsqueeze(-1)

        partition_vocab_size = logits.size(-1)
        vocab_start, vocab_end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            partition_vocab_size, rank, world_size)
        outside = (target < vocab_start) | (target >= vocab_end)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        predicted = torch.gather(logits, -1, local_target.unsqueeze(-1)).squeeze(-1)
        predicted = predicted.masked_fill(outside, 0.0)

        sum_logits = logits.sum(dim=-1) if label_smoothing > 0.0 else None
        # `logits` is this function's own shifted copy: exponentiate it in place.
        exp_logits = logits.exp_()
        sum_exp = exp_logits.sum(dim=-1)
        if world_size > 1:
            dist.all_reduce(predicted, group=group)
            dist.all_reduce(sum_exp, group=group)
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - predicted
        softmax = exp_logits.div_(sum_exp.unsqueeze(-1))

        vocab_size = partition_vocab_size * world_size
        smoothing = 0.0
        if label_smoothing > 0.0:
            # Target distribution: 1 - label_smoothing on the target and
            # label_smoothing / (V - 1) on every other token, i.e.
            # (1 - s) * one_hot + s / V with s = label_smoothing * V / (V - 1).
            smoothing = label_smoothing * vocab_size / (vocab_size - 1)
            sum_log_probs = (sum_logits - partition_vocab_size * log_sum_exp)
            if world_size > 1:
                dist.all_reduce(sum_log_probs, group=group)
            loss = (1.0 - smoothing) * loss - smoothing * sum_log_probs / vocab_size

        ctx.smoothing, ctx.vocab_size = smoothing, vocab_size
        ctx.input_dtype = vocab_parallel_logits.dtype
        ctx.save_for_backward(softmax, outside, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, outside, local_target = ctx.saved_tensors
        # Turn the saved softmax into the gradient in place (as upstream), saving a copy of
        # the [tokens, vocab] tensor; a second backward with retain_graph=True is not supported.
        grad = softmax
        on_target = (~outside).to(grad.dtype) * (1.0 - ctx.smoothing)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -on_target.unsqueeze(-1))
        if ctx.smoothing > 0.0:
            grad.sub_(ctx.smoothing / ctx.vocab_size)
        grad.mul_(grad_output.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token loss from [..., vocab / TP] logits and [...] global target ids.

    `label_smoothing` in [0, 1) moves that much probability mass evenly onto the
    non-target tokens of the full vocabulary.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing)
