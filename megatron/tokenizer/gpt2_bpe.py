"""GPT-2 byte-level BPE, encoded with a locally built tiktoken `Encoding`.

The ranks come from `merges.txt` (byte tokens first in GPT-2's byte-to-unicode order, then
one rank per merge), which is exactly how GPT-2's own BPE orders merges; the ids come from
`vocab.json`. For the real GPT-2 files rank == id; other vocabularies get a remap table.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Dict, List, Sequence

import numpy as np

from megatron.tokenizer.tokenizer import AbstractTokenizer

# GPT-2's pre-tokenisation regex (contractions, letters, numbers, other, whitespace).
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                r"""|\s+(?!\S)|\s+""")
EOD_TOKEN = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from each byte to a printable unicode character."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _decode_token(token: str, byte_decoder: Dict[str, int], path: str) -> bytes:
    try:
        return bytes(byte_decoder[ch] for ch in token)
    except KeyError as error:
        raise ValueError(f"{path}: token {token!r} has a character outside GPT-2's "
                         "byte-to-unicode table") from error


def load_mergeable_ranks(vocab_file: str, merge_file: str) -> Dict[bytes, int]:
    """Byte sequences ranked in BPE merge order, as tiktoken expects."""
    byte_decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks: Dict[bytes, int] = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}
    try:
        with open(merge_file, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"--merge-file {merge_file}: not a UTF-8 merges file ({error})") from None
    for line_number, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"--merge-file {merge_file}:{line_number}: expected two tokens, "
                             f"got {line!r}")
        merged = (_decode_token(parts[0], byte_decoder, merge_file)
                  + _decode_token(parts[1], byte_decoder, merge_file))
        if merged not in ranks:
            ranks[merged] = len(ranks)
    return ranks


class GPT2BPETokenizer(AbstractTokenizer):
    """Byte-level BPE with GPT-2's regex; `<|endoftext|>` in text is ordinary text."""

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        import tiktoken

        for path, flag in ((vocab_file, "--vocab-file"), (merge_file, "--merge-file")):
            try:
                open(path, "rb").close()
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{flag} {path}: file not found") from error
        try:
            with open(vocab_file, encoding="utf-8") as handle:
                self.encoder: Dict[str, int] = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"--vocab-file {vocab_file}: not a GPT-2 vocabulary (JSON object of "
                             f"token to id): {error}") from None
        if not isinstance(self.encoder, dict):
            raise ValueError(f"--vocab-file {vocab_file}: not a GPT-2 vocabulary (JSON object of "
                             f"token to id), got a JSON {type(self.encoder).__name__}")
        if EOD_TOKEN not in self.encoder:
            raise ValueError(f"{vocab_file}: vocabulary has no {EOD_TOKEN} token")
        byte_decoder = {ch: b for b, ch in bytes_to_unicode().items()}
        ranks = load_mergeable_ranks(vocab_file, merge_file)
        rank_to_id = np.full(len(ranks), -1, dtype=np.int64)
        for token, token_id in self.encoder.items():
            if token == EOD_TOKEN:
                continue
            rank = ranks.get(_decode_token(token, byte_decoder, vocab_file))
            if rank is not None:
                rank_to_id[rank] = token_id
        if (rank_to_id < 0).any():
            missing = int((rank_to_id < 0).sum())
            raise ValueError(f"{vocab_file}: {missing} tokens produced by {merge_file} are "
                             "missing from the vocabulary")
        self._eod_id = int(self.encoder[EOD_TOKEN])
        self._identity = bool((rank_to_id == np.arange(len(ranks))).all())
        self._rank_to_id = rank_to_id
        self._id_to_rank = {int(i): r for r, i in enumerate(rank_to_id)}
        # tiktoken needs the special token outside the mergeable ranks.
        self._eod_rank = self._eod_id if self._identity and self._eod_id >= len(ranks) else len(ranks)
        self._encoding = tiktoken.Encoding(
            name=f"gpt2-local-{len(ranks)}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOD_TOKEN: self._eod_rank})
        self._vocab_size = len(self.encoder)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod_id

    def tokenize(self, text: str) -> List[int]:
        ranks = self._encoding.encode_ordinary(text)
        if self._identity:
            return ranks
        return self._rank_to_id[np.asarray(ranks, dtype=np.int64)].tolist()

    def detokenize(self, ids: Sequence[int]) -> str:
        if self._identity:
            return self._encoding.decode([int(i) for i in ids])
        ranks = [self._eod_rank if int(i) == self._eod_id else self._id_to_rank[int(i)]
                 for i in ids]
        return self._encoding.decode(ranks)
