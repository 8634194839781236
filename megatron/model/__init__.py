"""The GPT model. Names are imported lazily (PEP 562), so importing the package does no work:

    from megatron.model import GPTModel, GPTModelPipe, TransformerConfig
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "TransformerConfig": "megatron.model.transformer_config",
    "GPTModel": "megatron.model.gpt_model",
    "GPTModelPipe": "megatron.model.gpt_model_pipe",
    "LayerNorm": "megatron.model.fused_layer_norm",
    "RMSNorm": "megatron.model.fused_layer_norm",
    "AttnMaskType": "megatron.model.fused_softmax",
    "FusedScaleMaskSoftmax": "megatron.model.fused_softmax",
    "ParallelTransformer": "megatron.model.transformer",
    "ParallelTransformerLayer": "megatron.model.transformer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'megatron.model' has no attribute {name!r}")
