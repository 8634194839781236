"""Tokenizer factory, the padded-vocabulary rule and the tokenizer interface.

Concrete tokenizers live in their own modules and import their third-party backends
lazily, so importing this module is cheap.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional, Sequence

TOKENIZER_TYPES = ("GPT2BPETokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                   "HFTokenizer", "NullTokenizer")


class AbstractTokenizer(ABC):
    """What the data pipeline and training need from a tokenizer."""

    padded_vocab_size: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (before padding)."""

    @property
    @abstractmethod
    def eod(self) -> int:
        """End-of-document id appended by `--append-eod`."""

    @abstractmethod
    def tokenize(self, text: str) -> List[int]:
        """Text to ids; special-token text inside `text` is treated as the backend does."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Ids back to text."""


def pad_vocab_size(orig: int, *, make_vocab_size_divisible_by: int,
                   tensor_model_parallel_size: int) -> int:
    """Smallest size >= `orig` divisible by make_vocab_size_divisible_by * TP (upstream rule)."""
    if orig <= 0:
        raise ValueError(f"vocabulary size must be positive, got {orig}")
    if make_vocab_size_divisible_by <= 0:
        raise ValueError("--make-vocab-size-divisible-by must be positive, got "
                         f"{make_vocab_size_divisible_by}")
    if tensor_model_parallel_size <= 0:
        raise ValueError("--tensor-model-parallel-size must be positive, got "
                         f"{tensor_model_parallel_size}")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-orig // multiple) * multiple


def _require(value: Optional[object], flag: str, tokenizer_type: str) -> object:
    if value is None:
        raise ValueError(f"--tokenizer-type {tokenizer_type} needs {flag}")
    return value


def build_tokenizer(tokenizer_type: str, *, vocab_file: Optional[str] = None,
                    merge_file: Optional[str] = None, tokenizer_model: Optional[str] = None,
                    vocab_size: Optional[int] = None, make_vocab_size_divisible_by: int = 128,
                    tensor_model_parallel_size: int = 1,
                    vocab_extra_ids: int = 0, trust_remote_code: bool = False) -> AbstractTokenizer:
    """Build the tokenizer named by `--tokenizer-type` and set its `padded_vocab_size`."""
    if tokenizer_type == "GPT2BPETokenizer":
        from megatron.tokenizer.gpt2_bpe import GPT2BPETokenizer

        tokenizer: AbstractTokenizer = GPT2BPETokenizer(
            str(_require(vocab_file, "--vocab-file", tokenizer_type)),
            str(_require(merge_file, "--merge-file", tokenizer_type)))
    elif tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        from megatron.tokenizer import sentencepiece_tokenizer as spt

        model = str(_require(tokenizer_model, "--tokenizer-model", tokenizer_type))
        if tokenizer_type == "SentencePieceTokenizer":
            tokenizer = spt.SentencePieceTokenizer(model, vocab_extra_ids=vocab_extra_ids)
        else:
            tokenizer = spt.GPTSentencePieceTokenizer(model)
    elif tokenizer_type == "HFTokenizer":
        from megatron.tokenizer.hf_tokenizer import HFTokenizer

        tokenizer = HFTokenizer(str(_require(tokenizer_model, "--tokenizer-model", tokenizer_type)),
                                trust_remote_code=trust_remote_code)
    elif tokenizer_type == "NullTokenizer":
        tokenizer = NullTokenizer(int(_require(vocab_size, "--vocab-size", tokenizer_type)))
    else:
        raise ValueError(f"unknown --tokenizer-type {tokenizer_type!r}; "
                         f"expected one of {', '.join(TOKENIZER_TYPES)}")
    tokenizer.padded_vocab_size = pad_vocab_size(
        tokenizer.vocab_size, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        tensor_model_parallel_size=tensor_model_parallel_size)
    return tokenizer


class NullTokenizer(AbstractTokenizer):
    """Ids written as space-separated integers; EOD is `vocab_size` (upstream convention)."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size <= 0:
            raise ValueError(f"--vocab-size must be positive for NullTokenizer, got {vocab_size}")
        self._eod_id = int(vocab_size)
        self._vocab_size = int(vocab_size) + 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod_id

    def tokenize(self, text: str) -> List[int]:
        return [int(piece) for piece in text.split()]

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)
