"""A local Hugging Face `tokenizers` file (tokenizer.json) or directory; never downloads."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from megatron.tokenizer.tokenizer import AbstractTokenizer

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def _eos_from_config(directory: str) -> Optional[str]:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        eos = json.load(handle).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos


def _fast_tokenizer_from_directory(path: str, trust_remote_code: bool = False):
    """A local directory without tokenizer.json (e.g. vocab + merges): let transformers
    convert it, offline; transformers is optional."""
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise FileNotFoundError(f"--tokenizer-model {path}: no tokenizer.json found, and "
                                "converting other files needs the optional transformers "
                                "package") from error
    try:
        loaded = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True,
                                               trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"--tokenizer-model {path}: no usable tokenizer files "
                                f"({error})") from error
    return loaded.backend_tokenizer


class HFTokenizer(AbstractTokenizer):
    """Wraps `tokenizers.Tokenizer`; EOD is the configured EOS token or a common one."""

    def __init__(self, path: str, *, trust_remote_code: bool = False) -> None:
        """trust_remote_code (`--trust-remote-code`): let transformers run the tokenizer code
        a local directory ships, when it has no tokenizer.json."""
        from tokenizers import Tokenizer

        file_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if os.path.isfile(file_path):
            try:
                self.tokenizer = Tokenizer.from_file(file_path)
            except Exception as error:  # tokenizers raises its own Exception for a bad file
                raise ValueError(f"--tokenizer-model {file_path}: not a Hugging Face "
                                 f"tokenizer.json ({str(error).strip()})") from None
        elif os.path.isdir(path):
            self.tokenizer = _fast_tokenizer_from_directory(path, trust_remote_code)
        else:
            raise FileNotFoundError(f"--tokenizer-model {path}: no tokenizer.json found "
                                    "(HFTokenizer reads local files only)")
        eos = _eos_from_config(os.path.dirname(file_path))
        candidates = ([eos] if eos else []) + list(_EOS_CANDIDATES)
        eod = next((self.tokenizer.token_to_id(t) for t in candidates
                    if self.tokenizer.token_to_id(t) is not None), None)
        if eod is None:
            raise ValueError(f"--tokenizer-model {path}: cannot find an end-of-document token "
                             f"(tried {candidates})")
        self._eod_id = int(eod)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def eod(self) -> int:
        return self._eod_id

    def tokenize(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
