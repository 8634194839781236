"""The one exception of checkpoint saving and loading (pretrain_gpt.py prints it as one line)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked; the message names the files or fields."""
