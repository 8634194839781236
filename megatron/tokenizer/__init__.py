"""Tokenizers with the upstream `--tokenizer-type` names (see `build_tokenizer`)."""
from megatron.tokenizer.tokenizer import AbstractTokenizer, build_tokenizer, pad_vocab_size

__all__ = ["AbstractTokenizer", "build_tokenizer", "pad_vocab_size"]
