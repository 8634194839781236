"""Data pipeline benchmark (not collected by pytest).

1. Preprocessing throughput (documents/s, tokens/s, MB/s) of tools/preprocess_data.py with
   its native GPT-2 BPE, against the same pipeline driven by a pure-Python byte-level BPE
   encoder written here in the upstream style, at the same worker count. Corpus: the
   reference corpus repeated 10 times when ../shared/data exists, else the demo corpus with
   a byte-level BPE vocabulary trained on it by HF `tokenizers`.
2. Index building for 10 M samples: the C++ `build_sample_idx` against its numpy twin, and
   the C++ blending indices.

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_data.py [--workers 2] [--repeat 10]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import regex

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from megatron.data import index_helpers  # noqa: E402
from megatron.data.helpers_loader import load_helpers  # noqa: E402
from megatron.tokenizer.gpt2_bpe import GPT2_PATTERN, bytes_to_unicode  # noqa: E402


class PurePythonGPT2:
    """Upstream-style encoder (the structure of Megatron's gpt2_tokenization.py): regex
    pieces, a cached per-piece BPE that returns space-joined token strings, then a separate
    token-string -> id pass."""

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        with open(vocab_file, encoding="utf-8") as handle:
            self.encoder = json.load(handle)
        with open(merge_file, encoding="utf-8") as handle:
            merges = [tuple(l.split()) for l in handle.read().split("\n")[1:] if l.strip()]
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pattern = regex.compile(GPT2_PATTERN)
        self.special_tokens = {}
        self.cache = {}
        self.eod = self.encoder["<|endoftext|>"]
        self.vocab_size = len(self.encoder)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def tokenize_to_strings(self, text: str) -> list:
        tokens = []
        for piece in self.pattern.findall(text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            tokens.extend(self.bpe(piece).split(" "))
        return tokens

    def convert_tokens_to_ids(self, tokens: list) -> list:
        ids = []
        for token in tokens:
            if token in self.special_tokens:
                ids.append(self.special_tokens[token])
            else:
                ids.append(self.encoder.get(token, 0))
        return ids

    def tokenize(self, text: str) -> list:
        return self.convert_tokens_to_ids(self.tokenize_to_strings(text))


def load_preprocess():
    spec = importlib.util.spec_from_file_location("bench_preprocess_data",
                                                  ROOT / "tools" / "preprocess_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prepare_corpus(work: Path, repeat: int):
    """(corpus path, vocab file, merge file, description)."""
    if (SHARED / "corpus.jsonl").exists():
        text = (SHARED / "corpus.jsonl").read_text(encoding="utf-8")
        corpus = work / "corpus_x10.jsonl"
        corpus.write_text(text * repeat, encoding="utf-8")
        return (corpus, str(SHARED / "gpt2-vocab.json"), str(SHARED / "gpt2-merges.txt"),
                f"reference corpus x{repeat}, GPT-2 vocabulary")
    from tokenizers import ByteLevelBPETokenizer

    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "build_demo_corpus.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    corpus = work / "demo.jsonl"
    demo.build_corpus(str(corpus), max_mb=30.0)
    texts = [json.loads(l)["text"] for l in corpus.read_text(encoding="utf-8").splitlines()]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(texts, vocab_size=8192, special_tokens=["<|endoftext|>"],
                                show_progress=False)
    trainer.save_model(str(work), "demo")
    return (corpus, str(work / "demo-vocab.json"), str(work / "demo-merges.txt"),
            "demo corpus (stdlib sources), 8192-token byte-level BPE trained on it")


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped workers (insensitive to other load)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_preprocess(preprocess, corpus: Path, vocab: str, merges: str, prefix: Path,
                   workers: int, pure_python: bool) -> dict:
    args = preprocess.get_args(["--input", str(corpus), "--output-prefix", str(prefix),
                                "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
                                "--merge-file", merges, "--append-eod", "--workers",
                                str(workers), "--log-interval", "100000000"])
    original = preprocess._tokenizer
    cpu_before = _cpu_seconds()
    if pure_python:
        preprocess._tokenizer = lambda a: PurePythonGPT2(a.vocab_file, a.merge_file)
    try:
        counts = preprocess.run(args)
    finally:
        preprocess._tokenizer = original
    counts["cpu"] = _cpu_seconds() - cpu_before
    counts["mb"] = corpus.stat().st_size / 1e6
    return counts


def bench_preprocess(workers: int, repeat: int, trials: int) -> None:
    """Best of `trials` alternating runs of each encoder (the machine may be shared)."""
    preprocess = load_preprocess()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus, vocab, merges, what = prepare_corpus(work, repeat)
        print(f"\n== preprocess_data, {what}: {corpus.stat().st_size / 1e6:.1f} MB, "
              f"--workers {workers}, best of {trials}; load average {os.getloadavg()[0]:.1f}")
        names = (("native (tiktoken)", False, "native"), ("pure-Python BPE", True, "purepy"))
        best = {}
        for _ in range(trials):
            for name, pure, tag in names:
                counts = run_preprocess(preprocess, corpus, vocab, merges, work / tag,
                                        workers, pure)
                if name not in best or counts["seconds"] < best[name]["seconds"]:
                    best[name] = counts
        for name, _, _ in names:
            counts = best[name]
            seconds = counts["seconds"]
            print(f"{name:>18}: {counts['documents'] / seconds:9.1f} docs/s "
                  f"{counts['tokens'] / seconds:12.0f} tokens/s {counts['mb'] / seconds:7.2f} MB/s"
                  f"  ({counts['documents']} docs, {counts['tokens']} tokens, {seconds:.2f} s "
                  f"wall, {counts['cpu']:.2f} CPU-s = {counts['mb'] / counts['cpu']:.2f} MB per "
                  "CPU-s)")
        same = all((work / f"native_text_document{e}").read_bytes()
                   == (work / f"purepy_text_document{e}").read_bytes() for e in (".bin", ".idx"))
        speedup = best["pure-Python BPE"]["seconds"] / best["native (tiktoken)"]["seconds"]
        cpu_ratio = best["pure-Python BPE"]["cpu"] / best["native (tiktoken)"]["cpu"]
        print(f"speed-up {speedup:.1f}x wall, {cpu_ratio:.1f}x CPU time; "
              f"outputs byte-identical: {same}; "
              f"load average now {os.getloadavg()[0]:.1f}")


def bench_indices(num_samples: int, seq_length: int) -> None:
    helpers = load_helpers()
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 2000, size=1_000_000).astype(np.int32)
    tokens = int(sizes.sum())
    epochs = -(-(num_samples * seq_length + 1) // tokens)
    doc_idx = np.tile(np.arange(len(sizes), dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    print(f"\n== index building: {num_samples / 1e6:.0f} M samples of {seq_length} tokens, "
          f"{len(sizes)} documents x {epochs} epochs")
    timings = {}
    outputs = {}
    for name, fn in (("C++ build_sample_idx", helpers.build_sample_idx if helpers else None),
                     ("numpy twin", index_helpers.build_sample_idx_numpy)):
        if fn is None:
            print(f"{name:>22}: unavailable")
            continue
        start = time.perf_counter()
        outputs[name] = fn(sizes, doc_idx, seq_length, epochs, tokens)
        timings[name] = time.perf_counter() - start
        print(f"{name:>22}: {timings[name]:.3f} s ({outputs[name].shape[0] - 1} samples)")
    if len(outputs) == 2:
        a, b = outputs.values()
        print(f"identical: {bool(np.array_equal(a, b))}")
    if helpers is not None:
        weights = np.array([0.5, 0.3, 0.2])
        start = time.perf_counter()
        index_helpers.build_blending_indices(weights, num_samples)
        print(f"{'C++ blending indices':>22}: {time.perf_counter() - start:.3f} s "
              f"({num_samples / 1e6:.0f} M samples, 3 datasets)")
        small = 200_000
        start = time.perf_counter()
        index_helpers.build_blending_indices_numpy(np.zeros(small, np.uint8),
                                                   np.zeros(small, np.int64), weights, 3, small)
        per = (time.perf_counter() - start) / small
        print(f"{'numpy blending twin':>22}: {per * num_samples:.1f} s projected "
              f"(measured on {small} samples)")


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10_000_000)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--skip-preprocess", action="store_true")
    args = parser.parse_args()
    if not args.skip_preprocess:
        bench_preprocess(args.workers, args.repeat, args.trials)
    bench_indices(args.num_samples, args.seq_length)


if __name__ == "__main__":
    main()
