"""Model FLOPs of one training iteration (the numerator of TFLOP/s and MFU).

Counts matrix multiplications only (2 FLOPs per multiply-add), as Megatron does. With the
classic shape (ffn = 4h, no GQA, GeLU, no recompute) it reduces to Megatron's
72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)); it also covers grouped-query attention (smaller K/V
projections), SwiGLU (three MLP matrices) and activation recompute (the recomputed part of
each layer's forward runs twice). Everything is read from the model's `TransformerConfig`.
"""
from megatron.model.transformer_config import TransformerConfig

RECOMPUTE_KINDS = ("none", "full", "selective")


def recompute_kind(model_config: TransformerConfig) -> str:
    """none, full (every layer's forward again in backward) or selective (core attention)."""
    if model_config.recompute_granularity:
        return model_config.recompute_granularity
    return "full" if model_config.checkpoint_activations else "none"


def forward_flops_per_token(model_config: TransformerConfig, seq_length: int) -> dict:
    """Forward FLOPs per token, split into the parts recompute treats differently."""
    h = model_config.hidden_size
    query_dim = model_config.num_attention_heads * model_config.kv_channels
    kv_dim = model_config.num_key_value_heads * model_config.kv_channels
    projections = 2 * h * (query_dim + 2 * kv_dim) + 2 * query_dim * h
    mlp_matrices = 3 if model_config.activation == "swiglu" else 2
    mlp = 2 * mlp_matrices * h * model_config.ffn_hidden_size
    # Scores (QK^T) and the weighted sum (AV), counted over the full s x s square as Megatron does.
    core_attention = 4 * seq_length * query_dim
    return {
        "layer_dense": model_config.num_layers * (projections + mlp),
        "layer_core_attention": model_config.num_layers * core_attention,
        "lm_head": 2 * h * model_config.require_padded_vocab_size(),
    }


def training_flops_per_iteration(model_config: TransformerConfig, *, global_batch_size: int,
                                 seq_length: int) -> float:
    """FLOPs of forward + backward (backward = 2x forward) for one global batch, with the
    recompute the config asks for."""
    kind = recompute_kind(model_config)
    if kind not in RECOMPUTE_KINDS:
        raise ValueError(f"recompute_granularity must be full or selective, got {kind!r}")
    parts = forward_flops_per_token(model_config, seq_length)
    dense_passes = 4 if kind == "full" else 3
    attention_passes = 3 if kind == "none" else 4
    per_token = (dense_passes * parts["layer_dense"]
                 + attention_passes * parts["layer_core_attention"]
                 + 3 * parts["lm_head"])
    return float(per_token) * global_batch_size * seq_length
