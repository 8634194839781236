"""Tokenize a JSON-lines corpus into mmap indexed datasets (`<prefix>_<key>_<level>.bin/.idx`).

Upstream-compatible flags. Tokenization runs in `--workers` processes; the main process
writes the datasets in input order under temporary names and renames them only when the
run succeeds, so a failed run never leaves a valid-looking truncated pair. Malformed JSON
lines, missing keys and empty documents are reported with their line number and skipped
(counted in the summary), or stop the run under `--strict`.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

import numpy as np  # noqa: E402

from megatron.data import indexed_dataset  # noqa: E402
from megatron.tokenizer import build_tokenizer  # noqa: E402
from megatron.tokenizer.tokenizer import TOKENIZER_TYPES  # noqa: E402

MAX_REPORTED = 20


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_argument_group("input data")
    group.add_argument("--input", required=True, help="JSON lines file (.json/.jsonl[.gz])")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to extract; one dataset per key")
    group.add_argument("--split-sentences", action="store_true",
                       help="one sequence per sentence (needs nltk and its punkt data)")
    group.add_argument("--keep-newlines", action="store_true",
                       help="with --split-sentences, keep newlines between sentences")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first malformed line instead of skipping it")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument("--vocab-file", default=None)
    group.add_argument("--merge-file", default=None)
    group.add_argument("--tokenizer-model", default=None)
    group.add_argument("--vocab-size", type=int, default=None, help="for NullTokenizer")
    group.add_argument("--vocab-extra-ids", type=int, default=0)
    group.add_argument("--append-eod", action="store_true",
                       help="append the end-of-document id to every document")
    group.add_argument("--lang", default="english", help="language for sentence splitting")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True)
    group.add_argument("--dataset-impl", default="mmap", choices=["mmap"])
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, required=True, help="tokenizer processes")
    group.add_argument("--partitions", type=int, default=1,
                       help="accepted for compatibility; work is already spread over workers")
    group.add_argument("--log-interval", type=int, default=100,
                       help="documents between progress lines")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.partitions < 1:
        parser.error(f"--partitions must be >= 1, got {args.partitions}")
    if args.log_interval < 1:
        parser.error(f"--log-interval must be >= 1, got {args.log_interval}")
    if not os.path.isfile(args.input):
        parser.error(f"--input {args.input}: file not found")
    return args


def _tokenizer(args: argparse.Namespace):
    return build_tokenizer(args.tokenizer_type, vocab_file=args.vocab_file,
                           merge_file=args.merge_file, tokenizer_model=args.tokenizer_model,
                           vocab_size=args.vocab_size, vocab_extra_ids=args.vocab_extra_ids)


def _sentence_splitter(args: argparse.Namespace):
    try:
        import nltk
    except ImportError as error:
        raise RuntimeError("--split-sentences needs the optional package nltk "
                           "(pip install nltk, then download its 'punkt' data)") from error
    try:
        nltk.data.find("tokenizers/punkt")
    except LookupError as error:
        raise RuntimeError("--split-sentences needs nltk's 'punkt' data "
                           "(python -m nltk.downloader punkt)") from error
    separator = "\n" if args.keep_newlines else " "

    def split(text: str) -> List[str]:
        sentences = []
        for paragraph in text.split("\n") if args.keep_newlines else [text]:
            sentences.extend(nltk.tokenize.sent_tokenize(paragraph, language=args.lang))
        if args.keep_newlines and sentences:
            sentences = [s + separator for s in sentences[:-1]] + sentences[-1:]
        return sentences

    return split


class Encoder:
    """Per-process tokenizer; turns one raw line into encoded sequences per key."""

    args: argparse.Namespace
    dtype: np.dtype

    def __init__(self, args: argparse.Namespace, dtype: np.dtype) -> None:
        self.args = args
        self.dtype = dtype

    def initializer(self, tokenizer=None) -> None:
        """Set up this process; forked workers reuse the parent's `tokenizer` if given."""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        Encoder.tokenizer = tokenizer if tokenizer is not None else _tokenizer(self.args)
        Encoder.splitter = _sentence_splitter(self.args) if self.args.split_sentences else None

    def encode(self, item: Tuple[int, bytes]
               ) -> Tuple[int, Optional[str], Dict[str, List[bytes]], int]:
        """(line number, problem or None, encoded sequences per key, raw byte count)."""
        line_number, line = item
        if not line.strip():
            return line_number, "blank line", {}, len(line)
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return line_number, f"malformed JSON ({error})", {}, len(line)
        if not isinstance(record, dict):
            return line_number, "JSON value is not an object", {}, len(line)
        encoded: Dict[str, List[bytes]] = {}
        for key in self.args.json_keys:
            text = record.get(key)
            if text is None:
                return line_number, f"missing key {key!r}", {}, len(line)
            if not isinstance(text, str):
                return line_number, f"key {key!r} is not a string", {}, len(line)
            if not text.strip():
                return line_number, f"empty document in key {key!r}", {}, len(line)
            pieces = Encoder.splitter(text) if Encoder.splitter else [text]
            sequences = [Encoder.tokenizer.tokenize(p) for p in pieces]
            sequences = [s for s in sequences if s]
            if not sequences:
                return line_number, f"key {key!r} has no tokens", {}, len(line)
            if self.args.append_eod:
                sequences[-1] = list(sequences[-1]) + [Encoder.tokenizer.eod]
            encoded[key] = [np.asarray(s, dtype=self.dtype).tobytes() for s in sequences]
        return line_number, None, encoded, len(line)


def _inherit_tokenizer(encoder: Encoder) -> None:
    encoder.initializer(getattr(Encoder, "tokenizer", None))


def _read_lines(path: str, limiter: threading.Semaphore) -> Iterator[Tuple[int, bytes]]:
    raw = open(path, "rb")
    stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    with raw, stream:
        for line_number, line in enumerate(stream, start=1):
            limiter.acquire()
            yield line_number, line


def _output_paths(args: argparse.Namespace, key: str) -> Tuple[str, str]:
    level = "sentence" if args.split_sentences else "document"
    prefix = f"{args.output_prefix}_{key}_{level}"
    return indexed_dataset.data_file_path(prefix), indexed_dataset.index_file_path(prefix)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run(args: argparse.Namespace) -> Dict[str, int]:
    """Preprocess `args.input`; returns counts (documents, tokens, skipped)."""
    tokenizer = _tokenizer(args)  # configuration errors surface here, not in a worker
    if args.split_sentences:
        _sentence_splitter(args)
    dtype = np.dtype(indexed_dataset.best_fitting_dtype(tokenizer.vocab_size))
    encoder = Encoder(args, dtype)
    outputs = {key: _output_paths(args, key) for key in args.json_keys}
    tag = f".tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    builders = {key: indexed_dataset.MMapIndexedDatasetBuilder(bin_path + tag, dtype=dtype)
                for key, (bin_path, _) in outputs.items()}
    limiter = threading.Semaphore(max(4096, 256 * args.workers))
    total_bytes = os.path.getsize(args.input) if not args.input.endswith(".gz") else 0
    counts = {"documents": 0, "tokens": 0, "skipped": 0, "bytes": 0}
    start = time.time()
    pool = None
    finished = False
    try:
        if args.workers > 1:
            # Forked workers inherit the tokenizer built above (built once, not per worker).
            Encoder.tokenizer = tokenizer
            pool = multiprocessing.get_context("fork").Pool(args.workers,
                                                            initializer=_inherit_tokenizer,
                                                            initargs=(encoder,))
            results = pool.imap(encoder.encode, _read_lines(args.input, limiter), chunksize=32)
        else:
            encoder.initializer(tokenizer)
            results = map(encoder.encode, _read_lines(args.input, limiter))
        for line_number, problem, encoded, num_bytes in results:
            limiter.release()
            counts["bytes"] += num_bytes
            if problem is not None:
                message = f"{args.input}:{line_number}: {problem}"
                if args.strict:
                    raise ValueError(message + " (run without --strict to skip such lines)")
                counts["skipped"] += 1
                if counts["skipped"] <= MAX_REPORTED:
                    print(f"skipping {message}", file=sys.stderr, flush=True)
                continue
            for key, sequences in encoded.items():
                for data in sequences:
                    builders[key].add_raw(data)
                    counts["tokens"] += len(data) // dtype.itemsize
                builders[key].end_document()
            counts["documents"] += 1
            if counts["documents"] % args.log_interval == 0:
                elapsed = max(time.time() - start, 1e-9)
                rate = counts["bytes"] / elapsed
                eta = (f", ETA {_format_eta((total_bytes - counts['bytes']) / rate)}"
                       if total_bytes and rate > 0 else "")
                print(f"Processed {counts['documents']} documents "
                      f"({counts['documents'] / elapsed:.1f} docs/s, {rate / 1e6:.2f} MB/s{eta})",
                      file=sys.stderr, flush=True)
        for key, (bin_path, idx_path) in outputs.items():
            builders[key].finalize(idx_path + tag)
        for key, (bin_path, idx_path) in outputs.items():
            os.replace(bin_path + tag, bin_path)
            os.replace(idx_path + tag, idx_path)
        finished = True
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if not finished:
            for key, (bin_path, idx_path) in outputs.items():
                builders[key]._file.close()
                for path in (bin_path + tag, idx_path + tag):
                    if os.path.exists(path):
                        os.remove(path)
    seconds = time.time() - start
    counts["seconds"] = seconds
    print(f"Done: {counts['documents']} documents, {counts['tokens']} tokens, "
          f"{counts['skipped']} skipped lines, {seconds:.2f} s "
          f"({counts['documents'] / max(seconds, 1e-9):.1f} docs/s, "
          f"{counts['tokens'] / max(seconds, 1e-9):.0f} tokens/s, "
          f"{counts['bytes'] / max(seconds, 1e-9) / 1e6:.2f} MB/s) -> "
          + ", ".join(p for p, _ in outputs.values()), flush=True)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args(argv)
    if args.partitions > 1:
        print(f"note: --partitions {args.partitions} ignored; the {args.workers} workers "
              "already share the input", file=sys.stderr)
    try:
        run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
