"""GPTModel: the language model plus the (tied or untied) LM head and the per-token loss."""
from __future__ import annotations

from typing import Optional

import torch

from megatron.core import tensor_parallel
from megatron.model.language_model import TransformerLanguageModel, parallel_lm_logits
from megatron.model.transformer_config import TransformerConfig


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocab-parallel cross-entropy: logits [s, b, V/TP], labels [b, s] -> fp32 loss [b, s]."""
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits.float(),
                                                          labels.transpose(0, 1).contiguous())
    return losses.transpose(0, 1).contiguous()


class GPTModel(torch.nn.Module):
    """Megatron's GPT, with upstream's parameter names (`language_model.embedding...`,
    `language_model.encoder.layers.<i>...`, `language_model.output_layer.weight` untied).

    `parallel_output=True` keeps the logits split over the vocabulary (what the
    vocab-parallel loss wants); `pre_process` / `post_process` say whether this pipeline
    stage holds the embedding / the final norm and head (Megatron-style stages; the
    DeepSpeed pipeline uses `GPTModelPipe`).
    """

    def __init__(self, config: TransformerConfig, *, parallel_output: bool = True,
                 pre_process: bool = True, post_process: bool = True) -> None:
        super().__init__()
        self.config = config
        self.parallel_output = parallel_output
        self.pre_process = pre_process
        self.post_process = post_process
        self.untie_embeddings_and_output_weights = config.untie_embeddings_and_output_weights
        self.language_model = TransformerLanguageModel(config, pre_process=pre_process,
                                                       post_process=post_process)
        if post_process and not pre_process and not self.untie_embeddings_and_output_weights:
            # The last stage needs its own copy of the tied word embeddings; the same
            # init key gives it the first stage's values. Keeping the two copies in sync
            # (all-reduce of their gradients over the embedding group) is the training
            # loop's job.
            self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
                config.padded_vocab_size, config.hidden_size, init_method=config.init_method,
                config=config, init_key="embedding.word_embeddings")

    def set_input_tensor(self, input_tensor: Optional[torch.Tensor]) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> torch.nn.Parameter:
        """The weight the LM head multiplies by."""
        if self.untie_embeddings_and_output_weights:
            return self.language_model.output_layer.weight
        if self.pre_process:
            return self.language_model.embedding.word_embeddings.weight
        return self.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids, position_ids [b, s]; attention_mask [b, 1, s, s] bool with True =
        masked, or None for plain causal attention.

        Returns the fp32 per-token loss [b, s] when `labels` are given, else the logits
        [b, s, V/TP] (or [b, s, V] without parallel_output). A non-last pipeline stage
        returns its hidden states [s, b, h].
        """
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be a bool tensor (True = masked), "
                             f"got {attention_mask.dtype}")
        hidden = self.language_model(input_ids, position_ids, attention_mask)
        if not self.post_process:
            return hidden
        logits = parallel_lm_logits(
            hidden, self.shared_embedding_or_output_weight(),
            self.parallel_output if labels is None else True,
            sequence_parallel=self.config.sequence_parallel,
            async_tensor_model_parallel_allreduce=(
                self.config.async_tensor_model_parallel_allreduce
                and self.config.tensor_model_parallel_size > 1))
        if labels is None:
            return logits.transpose(0, 1).contiguous()
        return per_token_loss(logits, labels)
