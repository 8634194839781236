"""GPTModel: the language model plus the (tied or untied) LM head and the per-token loss."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from megatron.core import parallel_state
from megatron.model.kv_cache import KVCache
from megatron.model.language_model import TransformerLanguageModel, parallel_lm_logits
from megatron.model.loss import per_token_loss
from megatron.model.transformer_config import TransformerConfig

__all__ = ["GPTModel", "check_parallel_layout", "flatten_nested_state_dict", "per_token_loss"]


def flatten_nested_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """`{"a": {"b": t}}` -> `{"a.b": t}`; entries that are not mappings are kept as they are."""
    flat: Dict[str, Any] = {}
    for key, value in state_dict.items():
        if isinstance(value, Mapping):
            flat.update(flatten_nested_state_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_parallel_layout(config: TransformerConfig) -> None:
    """Raise ValueError, naming the flags, unless `config` matches the initialized groups
    and has no pipeline stages: GPTModel holds every layer (the pipeline engine builds
    GPTModelPipe instead)."""
    parallel_state.check_model_parallel_sizes(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        ds_sequence_parallel_size=config.ds_sequence_parallel_size)
    if config.pipeline_model_parallel_size != 1:
        raise ValueError(f"GPTModel holds the whole model and needs "
                         f"--pipeline-model-parallel-size 1, got "
                         f"{config.pipeline_model_parallel_size}; pipeline stages are built "
                         f"by GPTModelPipe")


class GPTModel(torch.nn.Module):
    """Megatron's GPT, with upstream's parameter names (`language_model.embedding...`,
    `language_model.encoder.layers.<i>...`, `language_model.output_layer.weight` untied).

    `parallel_output=True` keeps the logits split over the vocabulary (what the
    vocab-parallel loss wants). One model per tensor-parallel rank, no pipeline stages;
    `config` must match the initialized groups (`check_parallel_layout`). Every weight is
    initialized keyed by its name without the `language_model.` / `encoder.` prefixes
    (e.g. `layers.0.mlp.dense_h_to_4h`), so every tensor-parallel layout starts from the
    same full model with --use-cpu-initialization.
    """

    def __init__(self, config: TransformerConfig, *, parallel_output: bool = True) -> None:
        super().__init__()
        check_parallel_layout(config)
        self.config = config
        self.parallel_output = parallel_output
        self.untie_embeddings_and_output_weights = config.untie_embeddings_and_output_weights
        self.language_model = TransformerLanguageModel(config)

    def shared_embedding_or_output_weight(self) -> torch.nn.Parameter:
        """The weight the LM head multiplies by."""
        if self.untie_embeddings_and_output_weights:
            return self.language_model.output_layer.weight
        return self.language_model.embedding.word_embeddings.weight

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        """Also accepts upstream Megatron-DeepSpeed's nested layout, in which each submodule's
        entries sit in a dict under its name (`{"language_model": {"embedding": ...}}`):
        it is flattened to this model's dotted names first (docs/formats.md, section 4)."""
        return super().load_state_dict(flatten_nested_state_dict(state_dict), strict=strict,
                                       assign=assign)

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None,
                last_position_only: bool = False) -> torch.Tensor:
        """input_ids, position_ids [b, s]; attention_mask [b, 1, s, s] bool with True =
        masked, or None for plain causal attention. `kv_cache` (generation): the tokens
        continue those already cached, whose keys and values are reused.
        `last_position_only` (generation): logits [b, 1, V] of the last position only, which
        spares the LM head's work on the other positions of a prompt.

        Returns the fp32 per-token loss [b, s] when `labels` are given, else the logits
        [b, s, V/TP] (or [b, s, V] without parallel_output).

        With DeepSpeed-Ulysses (`ds_sequence_parallel_size` N > 1) every tensor but the
        attention mask holds this rank's s/N tokens (`megatron.training.batch
        .sequence_parallel_chunk`); the mask covers the whole sequence.
        """
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be a bool tensor (True = masked), "
                             f"got {attention_mask.dtype}")
        hidden = self.language_model(input_ids, position_ids, attention_mask, kv_cache)
        if last_position_only:
            if labels is not None or self.config.sequence_parallel:
                raise ValueError("last_position_only is for generation: no labels, no "
                                 "sequence parallelism")
            hidden = hidden[-1:]
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
