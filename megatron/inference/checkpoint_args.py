"""`--use-checkpoint-args`: the model's shape and tokenizer come from the flags the
checkpoint was trained with, so generation needs no model flags."""
from __future__ import annotations

import argparse
from typing import Iterable

# The flags (dests) that define the network and its vocabulary.
MODEL_ARGS = (
    "num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "kv_channels",
    "ffn_hidden_size", "seq_length", "max_position_embeddings", "use_rotary_position_embeddings",
    "rope_theta", "rotary_percent", "add_position_embedding", "make_vocab_size_divisible_by",
    "normalization", "layernorm_epsilon", "apply_residual_connection_post_layernorm",
    "openai_gelu", "swiglu", "untie_embeddings_and_output_weights", "add_bias_linear",
    "apply_query_key_layer_scaling", "attention_softmax_in_fp32", "fp32_residual_connection",
    "tokenizer_type", "vocab_file", "merge_file", "tokenizer_model", "vocab_size",
)
# Aliases older checkpoints may hold instead of the main name.
_ALIASES = {"num_layers": "encoder_num_layers", "seq_length": "encoder_seq_length"}
# Files may have moved since training: a path given on the command line wins.
_PATHS = ("vocab_file", "merge_file", "tokenizer_model")
_FLAG_OF = {"add_position_embedding": "--no-position-embedding",
            "add_bias_linear": "--disable-bias-linear",
            "rope_theta": "--rotary-position-embeddings-theta"}


def apply_checkpoint_args(args: argparse.Namespace, saved: argparse.Namespace, *,
                          explicit: Iterable[str], source: str) -> argparse.Namespace:
    """A copy of `args` whose model and tokenizer flags are the checkpoint's (`saved`).

    A flag also given on the command line (`explicit`, dests) must agree with the checkpoint;
    a disagreement raises ValueError naming the flag, both values and `source`. Flags the
    checkpoint does not record (older or upstream runs) keep the command line's value, and
    tokenizer file paths given on the command line replace the recorded ones.
    """
    merged = argparse.Namespace(**vars(args))
    explicit = set(explicit)
    for dest in MODEL_ARGS:
        value = getattr(saved, dest, None)
        if value is None and dest in _ALIASES:
            value = getattr(saved, _ALIASES[dest], None)
        if value is None and not hasattr(saved, dest):
            continue
        if dest in explicit and dest in _PATHS:
            continue
        if dest in explicit and getattr(args, dest) != value:
            flag = _FLAG_OF.get(dest, "--" + dest.replace("_", "-"))
            raise ValueError(f"{flag} {getattr(args, dest)} disagrees with the checkpoint's "
                             f"{value!r} ({source}); drop the flag or --use-checkpoint-args")
        setattr(merged, dest, value)
    return merged
