"""Cross-entropy over logits whose vocabulary dimension is split across TP ranks.

The full logits are never gathered: the max, the softmax normalizer and the target logit
are combined with three all-reduces over the tensor-parallel group.
"""
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.tensor_parallel.utils import VocabUtility


# On a CPU, rows of logits go through the loss in chunks of about this many bytes of fp32 work:
# a chunk stays in a core's L2 cache while it is shifted, gathered from, exponentiated and
# summed, so the [tokens, vocab] logits cross the memory bus about twice instead of once per
# operation. A GPU takes the whole tensor at once (per-chunk kernel launches would dominate).
CPU_CHUNK_BYTES = 1 << 20


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, label_smoothing, chunk_bytes):
        group = parallel_state.get_tensor_model_parallel_group()
        world_size = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        partition_vocab_size = vocab_parallel_logits.size(-1)
        logits = vocab_parallel_logits.reshape(-1, partition_vocab_size)
        flat_target = target.reshape(-1)
        tokens = logits.size(0)

        vocab_start, vocab_end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            partition_vocab_size, rank, world_size)
        outside = (flat_target < vocab_start) | (flat_target >= vocab_end)
        local_target = (flat_target - vocab_start).masked_fill(outside, 0)

        if world_size > 1:  # every rank's rows are shifted by the max over the whole vocabulary
            logits_max = torch.amax(logits, dim=-1).float()
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        else:
            logits_max = torch.empty(tokens, dtype=torch.float32, device=logits.device)
        # exp(logit - max), then the softmax, fp32: kept for the backward, which turns it into
        # the gradient.
        exp_logits = torch.empty((tokens, partition_vocab_size), dtype=torch.float32,
                                 device=logits.device)
        predicted = torch.empty(tokens, dtype=torch.float32, device=logits.device)
        sum_exp = torch.empty_like(predicted)
        sum_logits = torch.empty_like(predicted) if label_smoothing > 0.0 else None
        rows = tokens
        if logits.device.type == "cpu":
            rows = max(1, chunk_bytes // (4 * partition_vocab_size))
        for first in range(0, tokens, rows):
            chunk = slice(first, min(first + rows, tokens))
            work = exp_logits[chunk]
            # fp16/bf16 rows are widened first (exactly): mixed-dtype max and subtraction are
            # slower on a CPU than a copy and the fp32 ones
            source = logits[chunk] if logits.dtype == torch.float32 else work.copy_(logits[chunk])
            if world_size == 1:
                logits_max[chunk] = torch.amax(source, dim=-1)
            torch.sub(source, logits_max[chunk].unsqueeze(-1), out=work)
            predicted[chunk] = torch.gather(work, -1, local_target[chunk].unsqueeze(-1)).squeeze(-1)
            if sum_logits is not None:
                torch.sum(work, dim=-1, out=sum_logits[chunk])
            work.exp_()
            torch.sum(work, dim=-1, out=sum_exp[chunk])
            if world_size == 1:  # the normalizer is complete: divide while the chunk is in cache
                work.div_(sum_exp[chunk].unsqueeze(-1))
        predicted.masked_fill_(outside, 0.0)
        if world_size > 1:
            dist.all_reduce(predicted, group=group)
            dist.all_reduce(sum_exp, group=group)
            exp_logits.div_(sum_exp.unsqueeze(-1))
        softmax = exp_logits
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - predicted

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
        ctx.input_dtype, ctx.input_shape = vocab_parallel_logits.dtype, vocab_parallel_logits.shape
        ctx.rows = max(1, rows)
        ctx.save_for_backward(softmax, outside, local_target)
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_output):
        softmax, outside, local_target = ctx.saved_tensors
        # (softmax - target distribution) * grad_output, the same operations in the same order
        # as before the loss was chunked (its gradients are bit-identical). The saved softmax
        # becomes the gradient in place (as upstream): a second backward with
        # retain_graph=True is not supported.
        grad = softmax
        on_target = (~outside).to(grad.dtype) * (1.0 - ctx.smoothing)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -on_target.unsqueeze(-1))
        scale = grad_output.reshape(-1).unsqueeze(-1)
        # fp16/bf16 logits get their gradient in their own dtype, written chunk by chunk
        # while the fp32 rows are in cache (no second pass over the fp32 gradient).
        result = (grad if ctx.input_dtype == grad.dtype
                  else torch.empty_like(grad, dtype=ctx.input_dtype))
        for first in range(0, grad.size(0), ctx.rows):
            chunk = slice(first, first + ctx.rows)
            work = grad[chunk]
            if ctx.smoothing > 0.0:
                work.sub_(ctx.smoothing / ctx.vocab_size)
            work.mul_(scale[chunk])
            if result is not grad:
                result[chunk].copy_(work)
        return result.view(ctx.input_shape), None, None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0, *,
                                 chunk_bytes: int = CPU_CHUNK_BYTES) -> torch.Tensor:
    """Per-token fp32 loss from [..., vocab / TP] logits (any float dtype) and [...] global
    target ids. The logits are not modified.

    `label_smoothing` in [0, 1) moves that much probability mass evenly onto the
    non-target tokens of the full vocabulary. `chunk_bytes`: the fp32 working set per chunk
    of rows on a CPU (tests make it small to cross chunk edges).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing,
                                            chunk_bytes)
