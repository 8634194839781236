"""Enums shared with upstream Megatron.

Upstream checkpoints pickle `ModelType` inside their saved `args`, so this module path,
the class name, and the member names and values must stay as upstream has them.
"""
import enum


class ModelType(enum.Enum):
    """Which stack layout a model has; GPT is `encoder_or_decoder`."""

    encoder_or_decoder = 1
    encoder_and_decoder = 2
    retro_encoder = 3
    retro_decoder = 4
