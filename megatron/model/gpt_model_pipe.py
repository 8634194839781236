"""GPTModelPipe: the GPT model as a DeepSpeed `PipelineModule` of layer specs.

Spec indices (they name the pipeline engine's `layer_NN-model_TT-model_states.pt` files,
docs/formats.md, section 3B), for L transformer layers:

    0        cast of the inputs to the params dtype (a function: no file)
    1        EmbeddingPipe (TiedLayerSpec key "embed" unless untied)
    2..L+1   ParallelTransformerLayerPipe for global layers 0..L-1
    L+2      final LayerNorm / RMSNorm
    L+3      tied EmbeddingPipe computing the logits, or LMHeadPipe when untied
    L+4      cast of the logits back to fp32 (fp16/bf16 only; a function: no file)

Micro-batches are ((tokens, position_ids, attention_mask), (labels, loss_mask)) as in
Megatron-DeepSpeed. Between stages the activation is the hidden state [s, b, h], plus the
bool attention mask when it is forwarded (see `causal_mask_only`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

from megatron.core import parallel_state
from megatron.model import recompute
from megatron.model.fused_layer_norm import LayerNorm, RMSNorm
from megatron.model.language_model import Embedding, parallel_lm_logits
from megatron.model.loss import per_token_loss
from megatron.model.pipeline_partition import FLOPS_METHOD, balanced_bounds, spec_costs
from megatron.model.rotary_pos_embedding import build_rotary_embedding
from megatron.model.transformer import ParallelTransformerLayer, sequence_parallel_rng
from megatron.model.transformer_config import TransformerConfig
from megatron.model.utils import param_device

Activation = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _split(inputs: Activation) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if torch.is_tensor(inputs):
        return inputs, None
    if len(inputs) == 1:
        return inputs[0], None
    return inputs[0], inputs[1]


def _join(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> Activation:
    return hidden if mask is None else (hidden, mask)


class EmbeddingPipe(Embedding):
    """Embedding stage: (tokens, position_ids, attention_mask) -> hidden [s, b, h]
    (with the mask when it is forwarded)."""

    def __init__(self, config: TransformerConfig, *, causal_mask_only: bool = False) -> None:
        super().__init__(config)
        self.causal_mask_only = causal_mask_only

    def forward(self, inputs: Sequence[torch.Tensor]) -> Activation:  # type: ignore[override]
        input_ids, position_ids = inputs[0], inputs[1]
        mask = inputs[2] if len(inputs) > 2 and not self.causal_mask_only else None
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be a bool tensor (True = masked), got {mask.dtype}")
        return _join(super().forward(input_ids, position_ids), mask)


class ParallelTransformerLayerPipe(ParallelTransformerLayer):
    """A transformer layer taking and returning the pipeline activation."""

    def __init__(self, config: TransformerConfig, layer_number: int) -> None:
        super().__init__(config, layer_number)
        self.recompute_self = False
        """Set by GPTModelPipe for --recompute-method block."""
        self.rotary_pos_emb = build_rotary_embedding(config)

    def forward(self, inputs: Activation) -> Activation:  # type: ignore[override]
        hidden, mask = _split(inputs)
        rotary = None
        if self.rotary_pos_emb is not None:
            seq_length = hidden.shape[0] * (self.config.tensor_model_parallel_size
                                            if self.config.sequence_parallel else 1)
            rotary = self.rotary_pos_emb(seq_length, device=hidden.device)
        with sequence_parallel_rng(self.config):
            if self.recompute_self:
                # Full-block recompute: this layer is one of the first N of its stage.
                hidden = recompute.checkpoint_when_training(self.config, self, super().forward,
                                                            hidden, mask, rotary)
            else:
                hidden = super().forward(hidden, mask, rotary)
        return _join(hidden, mask)


class LayerNormPipe(LayerNorm):
    """Final LayerNorm; drops the forwarded mask."""

    def forward(self, inputs: Activation) -> torch.Tensor:  # type: ignore[override]
        return super().forward(_split(inputs)[0])


class RMSNormPipe(RMSNorm):
    """Final RMSNorm; drops the forwarded mask."""

    def forward(self, inputs: Activation) -> torch.Tensor:  # type: ignore[override]
        return super().forward(_split(inputs)[0])


class LMHeadPipe(torch.nn.Module):
    """Untied output projection (`lm_head.weight`), logits [s, b, V/TP]."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        from megatron.core import tensor_parallel

        self.config = config
        self.lm_head = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, config.padded_vocab_size, config=config,
            init_method=config.init_method, bias=False, gather_output=False,
            init_key="output_layer")

    def forward(self, inputs: Activation) -> torch.Tensor:
        return parallel_lm_logits(_split(inputs)[0], self.lm_head.weight, True,
                                  sequence_parallel=self.config.sequence_parallel)


def _tied_logits(embedding: EmbeddingPipe, inputs: Activation) -> torch.Tensor:
    """forward_fn of the tied head: logits [s, b, V/TP] from the word embeddings."""
    return parallel_lm_logits(_split(inputs)[0], embedding.word_embeddings_weight, True,
                              sequence_parallel=embedding.config.sequence_parallel)


class _CastInputs:
    """Spec 0: cast floating inputs to the params dtype (a no-op for token ids and masks)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, inputs: Any) -> Any:
        if torch.is_tensor(inputs):
            return inputs.to(self.dtype) if inputs.is_floating_point() else inputs
        return tuple(self(x) for x in inputs)


def _logits_to_loss(logits: torch.Tensor) -> torch.Tensor:
    """Last spec of fp16/bf16 models, where upstream casts the logits to fp32. The loss reads
    half-precision logits itself, in fp32 a chunk of rows at a time (losses and gradients
    bit-identical to casting first), so the full fp32 copy is skipped; the spec stays so that
    layer indices and pipeline partitions do not move."""
    return logits


def pipe_loss(output: torch.Tensor, labels: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """loss_fn: mean of the per-token loss over loss_mask (logits [s, b, V/TP], labels and
    loss_mask [b, s])."""
    labels_, loss_mask = labels
    losses = per_token_loss(output, labels_)
    loss_mask = loss_mask.reshape(-1).float()
    return torch.sum(losses.reshape(-1) * loss_mask) / loss_mask.sum()


def build_specs(config: TransformerConfig, *, causal_mask_only: bool = False) -> list:
    """The layer specs, in upstream's order (see the module docstring)."""
    tied = not config.untie_embeddings_and_output_weights
    specs: list = [_CastInputs(config.params_dtype)]
    if tied:
        specs.append(TiedLayerSpec("embed", EmbeddingPipe, config, causal_mask_only=causal_mask_only,
                                   tied_weight_attr="word_embeddings_weight"))
    else:
        specs.append(LayerSpec(EmbeddingPipe, config, causal_mask_only=causal_mask_only))
    for index in range(config.num_layers):
        specs.append(LayerSpec(ParallelTransformerLayerPipe, config, index + 1))
    norm = LayerNormPipe if config.normalization == "layernorm" else RMSNormPipe
    specs.append(LayerSpec(norm, config.hidden_size, config.layernorm_epsilon,
                           sequence_parallel=config.sequence_parallel,
                           params_dtype=config.params_dtype, device=param_device(config)))
    if tied:
        specs.append(TiedLayerSpec("embed", EmbeddingPipe, config, causal_mask_only=causal_mask_only,
                                   forward_fn=_tied_logits,
                                   tied_weight_attr="word_embeddings_weight"))
    else:
        specs.append(LayerSpec(LMHeadPipe, config))
    if config.params_dtype in (torch.float16, torch.bfloat16):
        specs.append(_logits_to_loss)
    return specs


class GPTModelPipe(PipelineModule):
    """GPT for DeepSpeed's pipeline engine; stages from `parallel_state.get_topology()`.

    partition_method: `parameters` (default), `uniform`, `type:<regex>` or `flops`
    (balanced by estimated training cost; `--pipeline-partition-method`). causal_mask_only: ignore the data's attention mask
    and apply the causal mask in every layer, so no mask travels between stages (what
    upstream always did); keep False when masks carry document boundaries
    (`--reset-attention-mask`).

    Activation recompute comes from the config (`megatron.model.recompute`): legacy and
    full-uniform chunks of N go through DeepSpeed's `activation_checkpoint_interval` (only
    chunks made purely of transformer layers are recomputed, as upstream), full-block marks
    the first N transformer layers of this stage, selective works inside each layer.

    `config` must have the tensor- and pipeline-parallel sizes of the initialized groups
    (ValueError naming the flags otherwise).
    """

    def __init__(self, config: TransformerConfig, *, partition_method: str = "parameters",
                 causal_mask_only: bool = False) -> None:
        parallel_state.check_model_parallel_sizes(
            tensor_model_parallel_size=config.tensor_model_parallel_size,
            pipeline_model_parallel_size=config.pipeline_model_parallel_size)
        self.config = config
        self.specs = build_specs(config, causal_mask_only=causal_mask_only)
        super().__init__(layers=self.specs, loss_fn=pipe_loss,
                         topology=parallel_state.get_topology(),
                         partition_method=partition_method,
                         activation_checkpoint_interval=recompute.full_recompute_chunk_size(config),
                         activation_checkpoint_func=recompute.checkpoint_function(config))
        layers = [f for f in self.forward_funcs if isinstance(f, ParallelTransformerLayerPipe)]
        for layer in layers[:recompute.block_recompute_layers(config)]:
            layer.recompute_self = True
        self._check_recompute_covers_layers(layers)

    def _check_recompute_covers_layers(self, layers) -> None:
        """Chunks that mix a transformer layer with another stage layer are not recomputed by
        DeepSpeed: say so instead of silently keeping those activations. The layers left out
        are kept in `unrecomputed_layers` (layer numbers)."""
        self.unrecomputed_layers = []
        interval = self.activation_checkpoint_interval
        if not interval:
            return
        # DeepSpeed caches its per-chunk decision only when the engine sets the interval, so
        # ask its own predicate chunk by chunk.
        for start in range(0, len(self.forward_funcs), interval):
            chunk = self.forward_funcs[start:start + interval]
            if not self._is_checkpointable(chunk):
                self.unrecomputed_layers += [f.layer_number for f in chunk
                                             if isinstance(f, ParallelTransformerLayerPipe)]
        if self.unrecomputed_layers:
            print(f"> warning: pipeline stage {parallel_state.get_pipeline_model_parallel_rank()}:"
                  f" layers {self.unrecomputed_layers} share a checkpoint chunk of {interval} with"
                  " the embedding or final norm and are not recomputed; use"
                  " --checkpoint-num-layers 1 (or --recompute-num-layers 1) to recompute every"
                  " layer", flush=True)

    def _partition_layers(self, method: str = "uniform") -> None:
        """DeepSpeed's methods, plus `flops`: stages balanced by estimated training cost,
        the embedding and the LM head included (`megatron.model.pipeline_partition`)."""
        if method.lower() != FLOPS_METHOD:
            super()._partition_layers(method=method)
            return
        costs = spec_costs(self.config)
        if len(costs) != len(self._layer_specs):
            raise RuntimeError(f"spec_costs gives {len(costs)} costs for {len(self._layer_specs)} specs")
        self.parts = balanced_bounds(self.config, self.num_stages)
        if self.global_rank == 0:
            shares = [sum(costs[a:b]) / sum(costs) for a, b in zip(self.parts, self.parts[1:])]
            print(f"> pipeline stages balanced by estimated FLOPs: spec bounds {self.parts}, "
                  f"cost shares {', '.join(f'{share:.0%}' for share in shares)}", flush=True)
        stage = self._topo.get_coord(self.global_rank).pipe
        self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    def _count_layer_params(self) -> list:
        """Parameters per spec, for `partition_method="parameters"`.

        DeepSpeed builds every layer of the whole model on every rank to count them; here
        each one is built uninitialized on CPU instead (no init cost, no accelerator
        memory), one at a time.
        """
        counting = dataclasses.replace(self.config, perform_initialization=False,
                                       use_cpu_initialization=True)
        counts = []
        for spec in self._layer_specs:
            if not isinstance(spec, LayerSpec):
                counts.append(0)
                continue
            args = [counting if arg is self.config else arg for arg in spec.module_args]
            kwargs = dict(spec.module_kwargs)
            if "device" in kwargs:
                kwargs["device"] = torch.device("cpu")
            module = spec.typename(*args, **kwargs)
            counts.append(sum(p.numel() for p in module.parameters() if p.requires_grad))
            del module
        return counts
