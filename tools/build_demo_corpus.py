"""Build a real JSON-lines corpus from the Python standard library already on this machine.

Documents are the library's module sources cut at line boundaries into chunks of about
4 KB, walked in sorted order, so the corpus is deterministic for a given Python install and
needs no download. Optionally trains a SentencePiece model on it (`--sentencepiece-prefix`)
so a demo has a tokenizer without any download either.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import tempfile
import time
from typing import Iterator, List, Optional, Sequence

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
             "lib2to3", "ensurepip", "turtledemo", "encodings"}
CHUNK_CHARS = 4000


def stdlib_sources(root: str) -> Iterator[str]:
    """Paths of the standard library's .py files, sorted, skipping tests and vendored code."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def chunk_text(text: str, limit: int = CHUNK_CHARS) -> List[str]:
    """Split at line boundaries into pieces of about `limit` characters."""
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if size + len(line) > limit and current:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return [c for c in chunks if c.strip()]


def build_corpus(output: str, *, max_mb: float, root: Optional[str] = None) -> int:
    """Write the corpus; returns the number of documents."""
    root = root or sysconfig.get_path("stdlib")
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"Python standard library not found at {root!r}")
    limit = int(max_mb * 1e6)
    written = documents = 0
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    partial = f"{output}.tmp{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as handle:
        for path in stdlib_sources(root):
            try:
                with open(path, encoding="utf-8") as source:
                    text = source.read()
            except (UnicodeDecodeError, OSError):
                continue
            relative = os.path.relpath(path, root)
            for part, chunk in enumerate(chunk_text(text)):
                line = json.dumps({"id": documents, "source": f"{relative}#{part}",
                                   "text": chunk}, ensure_ascii=False) + "\n"
                handle.write(line)
                written += len(line.encode("utf-8"))
                documents += 1
                if written >= limit:
                    break
            if written >= limit:
                break
    os.replace(partial, output)
    return documents


def train_sentencepiece(corpus: str, prefix: str, *, vocab_size: int) -> str:
    """Train a byte-fallback BPE SentencePiece model on the corpus; returns the .model path."""
    import sentencepiece

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as text:
        with open(corpus, encoding="utf-8") as handle:
            for line in handle:
                for piece in json.loads(line)["text"].splitlines():
                    if piece.strip():
                        text.write(piece + "\n")
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=text.name, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, split_digits=True,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            normalization_rule_name="identity", input_sentence_size=300000,
            shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    finally:
        os.remove(text.name)
    return prefix + ".model"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON lines file to write")
    parser.add_argument("--max-mb", type=float, default=4.0, help="stop after this many MB")
    parser.add_argument("--sentencepiece-prefix", default=None,
                        help="also train a SentencePiece model saved as PREFIX.model/.vocab")
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args(argv)
    if args.max_mb <= 0:
        parser.error(f"--max-mb must be positive, got {args.max_mb}")
    start = time.time()
    documents = build_corpus(args.output, max_mb=args.max_mb)
    print(f"wrote {documents} documents to {args.output} in {time.time() - start:.1f} s")
    if args.sentencepiece_prefix:
        start = time.time()
        model = train_sentencepiece(args.output, args.sentencepiece_prefix,
                                    vocab_size=args.vocab_size)
        print(f"trained {model} (vocab {args.vocab_size}) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
