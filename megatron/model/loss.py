"""The language-model loss, shared by GPTModel and GPTModelPipe."""
import torch

from megatron.core import tensor_parallel


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocab-parallel cross-entropy: logits [s, b, V/TP], labels [b, s] -> fp32 loss [b, s]."""
    # The loss works in fp32 itself, a chunk at a time: no full fp32 copy of bf16/fp16 logits.
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits,
                                                          labels.transpose(0, 1).contiguous())
    return losses.transpose(0, 1).contiguous()
