"""Model FLOPs of one training iteration (the numerator of TFLOP/s and MFU).

Counts matrix multiplications only (2 FLOPs per multiply-add), as Megatron does. With the
classic shape (ffn = 4h, no GQA, GeLU, no recompute) it reduces to Megatron's
72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)); it also covers grouped-query attention (smaller K/V
projections), SwiGLU (three MLP matrices) and activation recompute (the recomputed part of
each layer's forward runs twice).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The numbers the FLOP count depends on."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    kv_channels: int
    padded_vocab_size: int
    swiglu: bool = False

    @classmethod
    def of(cls, transformer_config) -> "ModelShape":
        """The shape of a `megatron.model.transformer_config.TransformerConfig`."""
        return cls(num_layers=transformer_config.num_layers,
                   hidden_size=transformer_config.hidden_size,
                   ffn_hidden_size=transformer_config.ffn_hidden_size,
                   num_attention_heads=transformer_config.num_attention_heads,
                   num_key_value_heads=transformer_config.num_key_value_heads,
                   kv_channels=transformer_config.kv_channels,
                   padded_vocab_size=transformer_config.padded_vocab_size,
                   swiglu=transformer_config.activation == "swiglu")


def forward_flops_per_token(shape: ModelShape, seq_length: int) -> dict:
    """Forward FLOPs per token, split into the parts recompute treats differently."""
    h = shape.hidden_size
    query_dim = shape.num_attention_heads * shape.kv_channels
    kv_dim = shape.num_key_value_heads * shape.kv_channels
    projections = 2 * h * (query_dim + 2 * kv_dim) + 2 * query_dim * h
    mlp_matrices = 3 if shape.swiglu else 2
    mlp = 2 * mlp_matrices * h * shape.ffn_hidden_size
    # Scores (QK^T) and the weighted sum (AV), counted over the full s x s square as Megatron does.
    core_attention = 4 * seq_length * query_dim
    return {
        "layer_dense": shape.num_layers * (projections + mlp),
        "layer_core_attention": shape.num_layers * core_attention,
        "lm_head": 2 * h * shape.padded_vocab_size,
    }


def training_flops_per_iteration(shape: ModelShape, *, global_batch_size: int, seq_length: int,
                                 recompute_granularity: str = "none") -> float:
    """FLOPs of forward + backward (backward = 2x forward) for one global batch.

    recompute_granularity: "none", "full" (every layer's forward runs again in backward) or
    "selective" (only the core attention is recomputed).
    """
    if recompute_granularity not in ("none", "full", "selective"):
        raise ValueError(f"recompute_granularity must be none, full or selective, "
                         f"got {recompute_granularity!r}")
    parts = forward_flops_per_token(shape, seq_length)
    dense_passes = 4 if recompute_granularity == "full" else 3
    attention_passes = 3 if recompute_granularity == "none" else 4
    per_token = (dense_passes * parts["layer_dense"]
                 + attention_passes * parts["layer_core_attention"]
                 + 3 * parts["lm_head"])
    return float(per_token) * global_batch_size * seq_length
