"""Pieces both conversion directions share: the tokenizer of a run, error reporting."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Callable, List, Optional

from megatron.checkpointing import CheckpointError

# What a refused conversion raises: reported as one line, exit code 1.
USER_ERRORS = (ValueError, CheckpointError, FileNotFoundError, NotADirectoryError,
               PermissionError)


def run_tool(name: str, body: Callable[[], None]) -> int:
    """Run `body`; a user error becomes `<name>: error: <one line>` on stderr and exit code 1."""
    try:
        body()
    except USER_ERRORS as error:
        message = " ".join(str(error).split("\n"))
        print(f"{name}: error: {message}", file=sys.stderr)
        return 1
    return 0


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tokenizer (default: the run's, or what the folder holds)")
    group.add_argument("--tokenizer-type", default=None,
                       help="GPT2BPETokenizer, SentencePieceTokenizer, GPTSentencePieceTokenizer, "
                            "HFTokenizer or NullTokenizer")
    group.add_argument("--vocab-file", default=None, help="GPT-2 BPE vocab.json")
    group.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt")
    group.add_argument("--tokenizer-model", default=None,
                       help="SentencePiece model, or HF tokenizer.json / folder")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="NullTokenizer: ids 0..N-1, end of document N")


def tokenizer_flags(tokenizer_type: str, *, vocab_file: Optional[str] = None,
                    merge_file: Optional[str] = None, tokenizer_model: Optional[str] = None,
                    vocab_size: Optional[int] = None) -> List[str]:
    flags = ["--tokenizer-type", tokenizer_type]
    for flag, value in (("--vocab-file", vocab_file), ("--merge-file", merge_file),
                        ("--tokenizer-model", tokenizer_model), ("--vocab-size", vocab_size)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def build_tokenizer_or_refuse(tokenizer_type: str, **kwargs):
    """megatron.tokenizer.build_tokenizer, with a missing file reported as one line."""
    from megatron.tokenizer import build_tokenizer

    try:
        return build_tokenizer(tokenizer_type, **kwargs)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split("\n"))
        raise ValueError(f"cannot build the tokenizer ({tokenizer_type}: {message}); pass "
                         "--vocab-file/--merge-file/--tokenizer-model/--vocab-size") from None


def copy_file(source: str, folder: str, name: str) -> None:
    shutil.copyfile(source, os.path.join(folder, name))
