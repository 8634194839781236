"""SentencePiece tokenizers with upstream's special-token conventions."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

from megatron.tokenizer.tokenizer import AbstractTokenizer


def _load_processor(model_file: str):
    import sentencepiece

    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"--tokenizer-model {model_file}: file not found")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=model_file)
    except (RuntimeError, OSError) as error:
        raise ValueError(f"--tokenizer-model {model_file}: not a SentencePiece model "
                         f"({str(error).strip()})") from None


class GPTSentencePieceTokenizer(AbstractTokenizer):
    """Plain SentencePiece ids; EOD is the model's `eos_id` (as upstream's GPT variant)."""

    def __init__(self, model_file: str) -> None:
        self.processor = _load_processor(model_file)
        self._vocab_size = int(self.processor.get_piece_size())
        self._eos_id = int(self.processor.eos_id())
        if self._eos_id < 0:
            raise ValueError(f"--tokenizer-model {model_file}: the model has no EOS piece, "
                             "which GPTSentencePieceTokenizer uses as end-of-document")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eos_id

    def tokenize(self, text: str) -> List[int]:
        return self.processor.encode_as_ids(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.processor.decode_ids([int(i) for i in ids])


class SentencePieceTokenizer(AbstractTokenizer):
    """SentencePiece plus upstream's added specials (<CLS>, <SEP>, <EOD>, <MASK>, pad/bos/eos,
    `<extra_id_N>`); special-token text in the input maps to its id."""

    def __init__(self, model_file: str, *, vocab_extra_ids: int = 0) -> None:
        self.processor = _load_processor(model_file)
        size = int(self.processor.get_piece_size())
        self._vocab: Dict[str, int] = {self.processor.id_to_piece(i): i for i in range(size)}
        self._special: Dict[str, int] = {}
        for token in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
            self._add_special(token)
        for getter, fallback in ((self.processor.pad_id, "<PAD>"),
                                 (self.processor.bos_id, "<BOS>"),
                                 (self.processor.eos_id, "<EOS>")):
            piece_id = getter()
            token = self.processor.id_to_piece(piece_id) if 0 <= piece_id < size else fallback
            self._add_special(token)
        for i in range(vocab_extra_ids):
            self._add_special(f"<extra_id_{i}>")
        self._inv_special = {v: k for k, v in self._special.items()}

    def _add_special(self, token: str) -> None:
        if token not in self._vocab:
            self._vocab[token] = len(self._vocab)
        self._special[token] = self._vocab[token]

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def eod(self) -> int:
        return self._special["<EOD>"]

    def tokenize(self, text: str) -> List[int]:
        ids: List[int] = []
        start = 0
        while True:
            hits = [(text.find(tok, start), tok) for tok in self._special]
            hits = [(pos, tok) for pos, tok in hits if pos >= 0]
            if not hits:
                break
            pos, tok = min(hits)
            ids.extend(self.processor.encode_as_ids(text[start:pos]))
            ids.append(self._special[tok])
            start = pos + len(tok)
        ids.extend(self.processor.encode_as_ids(text[start:]))
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        pieces: List[str] = []
        pending: List[int] = []
        for token_id in (int(i) for i in ids):
            if token_id in self._inv_special:
                pieces.append(self.processor.decode_ids(pending) + " ")
                pieces.append(self._inv_special[token_id] + " ")
                pending = []
            else:
                pending.append(token_id)
        pieces.append(self.processor.decode_ids(pending))
        return "".join(pieces)
