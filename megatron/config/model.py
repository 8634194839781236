"""The model's configuration (`TransformerConfig`) from the flags: the one place flags become
model fields. Shape rules (heads vs tensor parallelism, FFN default, ...) live in the config
type itself; here are only the rules about flags (aliases, required flags, contradictions)."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from megatron.model.transformer_config import TransformerConfig


def _resolve_alias(args: argparse.Namespace, dest: str, flag: str, alias_dest: str,
                   alias_flag: str) -> Optional[int]:
    value, alias = getattr(args, dest), getattr(args, alias_dest)
    if value is not None and alias is not None and value != alias:
        raise ValueError(f"{flag} {value} and {alias_flag} {alias} disagree; give only one")
    return value if value is not None else alias


def _flash_attention(args: argparse.Namespace) -> bool:
    chosen = [name for name, dest in (("v1", "use_flash_attn_v1"), ("v2", "use_flash_attn_v2"),
                                      ("triton", "use_flash_attn_triton"),
                                      ("builder", "use_flash_attn_builder"))
              if getattr(args, dest)]
    if len(chosen) > 1:
        raise ValueError("give at most one of --use-flash-attn(-v1), --use-flash-attn-v2, "
                         f"--use-flash-attn-triton, --use-flash-attn-builder (got {', '.join(chosen)})")
    return bool(chosen)


def _position_embedding_type(args: argparse.Namespace) -> str:
    if args.use_rotary_position_embeddings and not args.add_position_embedding:
        raise ValueError("--use-rotary-position-embeddings and --no-position-embedding contradict "
                         "each other")
    if args.rotary_percent != 1.0 and not args.use_rotary_position_embeddings:
        raise ValueError("--rotary-percent needs --use-rotary-position-embeddings")
    if args.use_rotary_position_embeddings:
        return "rope"
    return "learned_absolute" if args.add_position_embedding else "none"


def _recompute_granularity(args: argparse.Namespace) -> Optional[str]:
    granularity = args.recompute_granularity
    if args.recompute_activations:
        if granularity not in (None, "selective"):
            raise ValueError(f"--recompute-activations means selective recompute; it contradicts "
                             f"--recompute-granularity {granularity}")
        granularity = "selective"
    return granularity


def build_model_config(args: argparse.Namespace, *, tensor_model_parallel_size: int,
                       pipeline_model_parallel_size: int,
                       params_dtype: torch.dtype) -> TransformerConfig:
    """The model's configuration from the flags, without the padded vocabulary (the tokenizer
    decides it later: `TransformerConfig.with_padded_vocab_size`)."""
    num_layers = _resolve_alias(args, "num_layers", "--num-layers", "encoder_num_layers",
                                "--encoder-num-layers")
    seq_length = _resolve_alias(args, "seq_length", "--seq-length", "encoder_seq_length",
                                "--encoder-seq-length")
    for value, flag in ((num_layers, "--num-layers"), (seq_length, "--seq-length"),
                        (args.hidden_size, "--hidden-size"),
                        (args.num_attention_heads, "--num-attention-heads"),
                        (args.max_position_embeddings, "--max-position-embeddings")):
        if value is None:
            raise ValueError(f"{flag} is required")
    if seq_length < 1:
        raise ValueError(f"--seq-length must be positive, got {seq_length}")
    if seq_length > args.max_position_embeddings:  # upstream's rule, rotary runs included
        raise ValueError(f"--seq-length {seq_length} exceeds --max-position-embeddings "
                         f"{args.max_position_embeddings}")
    return TransformerConfig(
        num_layers=num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads, kv_channels=args.kv_channels,
        ffn_hidden_size=args.ffn_hidden_size, seq_length=seq_length,
        max_position_embeddings=args.max_position_embeddings,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        layernorm_epsilon=args.layernorm_epsilon, normalization=args.normalization,
        activation="swiglu" if args.swiglu else "gelu", openai_gelu=args.openai_gelu,
        add_bias_linear=args.add_bias_linear,
        position_embedding_type=_position_embedding_type(args),
        rotary_percent=args.rotary_percent, rotary_base=float(args.rope_theta),
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        fp32_residual_connection=args.fp32_residual_connection,
        init_method_std=args.init_method_std, masked_softmax_fusion=args.masked_softmax_fusion,
        bias_gelu_fusion=args.bias_gelu_fusion and args.add_bias_linear and not args.swiglu,
        bias_dropout_fusion=args.bias_dropout_fusion, use_flash_attn=_flash_attention(args),
        use_classic_attention=args.use_classic_attention,
        recompute_granularity=_recompute_granularity(args),
        recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers,
        checkpoint_activations=args.checkpoint_activations,
        checkpoint_num_layers=args.checkpoint_num_layers,
        deepspeed_activation_checkpointing=args.deepspeed_activation_checkpointing,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        ds_sequence_parallel_size=args.ds_sequence_parallel_size,
        use_cpu_initialization=bool(args.use_cpu_initialization),
        params_dtype=params_dtype, init_seed=args.seed)
