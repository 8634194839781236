"""What must match between a checkpoint and the flags for the saved weights to fit the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List

# Each field, with the flag a user changes to make it match.
_FLAGS = {
    "num_layers": "--num-layers", "hidden_size": "--hidden-size",
    "num_attention_heads": "--num-attention-heads",
    "num_key_value_heads": "--num-key-value-heads", "ffn_hidden_size": "--ffn-hidden-size",
    "padded_vocab_size": "padded vocabulary size (tokenizer, --make-vocab-size-divisible-by)",
    "tensor_model_parallel_size": "--tensor-model-parallel-size",
    "pipeline_model_parallel_size": "--pipeline-model-parallel-size",
}


@dataclass(frozen=True)
class ModelFingerprint:
    """The model shape and split a checkpoint's tensors were saved with."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    ffn_hidden_size: int
    padded_vocab_size: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int

    @classmethod
    def of(cls, model_config: Any) -> "ModelFingerprint":
        """The fingerprint of a complete model configuration (`TransformerConfig`)."""
        return cls(**{name: getattr(model_config, name) for name in _FLAGS})

    def mismatches(self, saved: Dict[str, Any], *, ignore: Iterable[str] = ()) -> List[str]:
        """'flag: checkpoint X, flags Y' for every field the checkpoint records differently
        (fields in `ignore` aside)."""
        found = []
        for name, value in asdict(self).items():
            if name in ignore:
                continue
            if name in saved and saved[name] is not None and saved[name] != value:
                found.append(f"{_FLAGS[name]}: checkpoint {saved[name]}, flags {value}")
        return found


def fingerprint_from_upstream_args(args: Any) -> Dict[str, Any]:
    """The fingerprint fields an upstream checkpoint's `args` Namespace records (None if absent)."""
    return {name: getattr(args, name, None) for name in _FLAGS}


LAYOUT_FIELDS = ("tensor_model_parallel_size", "pipeline_model_parallel_size")
"""The fingerprint fields that describe the split, not the model."""
