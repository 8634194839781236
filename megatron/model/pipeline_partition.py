"""`--pipeline-partition-method flops`: pipeline stages balanced by estimated training cost.

DeepSpeed's `parameters` method balances parameter counts, which weighs the embedding (a
lookup, almost free) as much as the language-model head (the largest matmul of a small
model: 78% of the FLOPs of a 4-layer h256 GPT with GPT-2's 50k vocabulary) and so puts the
head's stage far behind the others. Here each spec of `GPTModelPipe` (same order as
`gpt_model_pipe.build_specs`) weighs its forward + backward FLOPs per sequence; the embedding
and the final norm weigh their elementwise work, the head also its cross-entropy passes.
"""
from __future__ import annotations

from typing import List

import torch

from megatron.model.transformer_config import TransformerConfig

FLOPS_METHOD = "flops"
_ELEMENTWISE_PASSES_OF_CROSS_ENTROPY = 10  # max, shift, exp, sum, divide; backward's again


def _transformer_layer_flops(config: TransformerConfig, seq: int) -> float:
    """Forward matmul FLOPs of one layer on one sequence (Megatron's count: causal attention
    counted whole), for the whole tensor-parallel group."""
    h = config.hidden_size
    query = config.num_attention_heads * config.kv_channels
    key_value = 2 * config.num_query_groups * config.kv_channels
    mlp_in = (2 if config.activation == "swiglu" else 1) * config.ffn_hidden_size
    projections = h * (query + key_value) + query * h + h * mlp_in + config.ffn_hidden_size * h
    attention = 2 * seq * query  # scores and context, per query position
    return 2.0 * seq * projections + 2.0 * seq * attention


def spec_costs(config: TransformerConfig) -> List[float]:
    """Relative training cost (forward + backward FLOPs per sequence) of each pipeline spec.

    Matmuls count 3x their forward FLOPs (backward: gradients of inputs and of weights); a
    layer recomputed in backward (full recompute) counts 4x. `config.padded_vocab_size`
    must be set.
    """
    if config.padded_vocab_size is None:
        raise ValueError("spec_costs needs the padded vocabulary size (padded_vocab_size)")
    seq, h, vocab = config.seq_length, config.hidden_size, config.padded_vocab_size
    layer_passes = 4.0 if config.recompute_granularity == "full" or config.checkpoint_activations else 3.0
    layer = layer_passes * _transformer_layer_flops(config, seq)
    # the embedding's backward writes a dense [vocab, h] gradient: one pass over it
    embedding = 2.0 * seq * h + 2.0 * vocab * h
    head = 3.0 * 2.0 * seq * h * vocab + _ELEMENTWISE_PASSES_OF_CROSS_ENTROPY * seq * vocab
    costs = [0.0, embedding] + [layer] * config.num_layers + [10.0 * seq * h, head]
    if config.params_dtype in (torch.float16, torch.bfloat16):
        costs.append(0.0)  # the cast of the logits back to fp32
    return costs


def balanced_bounds(config: TransformerConfig, num_stages: int) -> List[int]:
    """Stage boundaries (DeepSpeed's `parts`: stage i holds specs parts[i]..parts[i+1]-1)
    that balance `spec_costs(config)`, by DeepSpeed's own linear-partition solver.

    The embedding stays with the first transformer layer and the final norm with the head:
    then every stage holds parameters with and without weight decay. DeepSpeed's ZeRO
    optimizer issues collectives per parameter group, so a stage holding only the tied head
    (one group) would wait forever on stages that have two.
    """
    from deepspeed.runtime import utils as ds_utils

    costs, layers = spec_costs(config), config.num_layers
    if layers < num_stages:
        raise ValueError(f"--pipeline-partition-method flops needs at least one transformer layer "
                         f"per stage (--num-layers {layers}, --pipeline-model-parallel-size "
                         f"{num_stages})")
    # units that move together: [cast, embedding, layer 0], layers 1..L-1, [norm, head, cast]
    starts = [0] + [2 + index for index in range(1, layers)] + [2 + layers]
    ends = starts[1:] + [len(costs)]
    units = [sum(costs[a:b]) for a, b in zip(starts, ends)]
    parts = ds_utils.partition_balanced(weights=units, num_parts=num_stages)
    return [starts[unit] if unit < len(units) else len(costs) for unit in map(int, parts)]
