"""GPT-2 byte-level BPE (tiktoken-backed) against an independent reference implementation.

The reference below follows the original GPT-2 algorithm: regex pre-tokenisation, bytes
mapped through the byte-to-unicode table, then repeatedly merging the adjacent pair with the
lowest merge rank. It owns its tables (written here, not imported from the package).
"""
import json
from collections import Counter

import pytest
import regex

from megatron.tokenizer import build_tokenizer

PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

VARIED_TEXTS = [
    "Hello world! It's a test; we'll see, they've done it, I'm sure, you'd agree.",
    "  leading spaces\tand\ttabs\n\nnew lines   \n trailing   ",
    "unicode: naïve café Ωμέγα 日本語のテキスト 🙂🚀 emoji",
    "control \x00\x01\x7f\x1b[0m characters and \u200b zero width",
    "numbers 12345 3.14159 -42 1e10 ٣٤٥",
    "<|endoftext|> is plain text here <|endoftext|>",
    "MiXeD CaSe, punctuation!!! ???... ---- ((()))",
    "",
    " ",
    "\n",
    "a",
]


def byte_table():
    """GPT-2's byte -> printable character table, written independently."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ReferenceBPE:
    """Textbook GPT-2 BPE: lowest-ranked merge first, on each regex piece."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.table = byte_table()

    def _bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), float("inf")), i)
                     for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == float("inf"):
                break
            first, second = [k for k, v in self.ranks.items() if v == rank][0]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            word = "".join(self.table[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[t] for t in self._bpe(word))
        return ids


def learn_tiny_bpe(text, num_merges):
    """Learn merges by most-frequent pair (ties by first occurrence); ids in a custom order."""
    table = byte_table()
    words = Counter(tuple(table[b] for b in p.encode("utf-8")) for p in PATTERN.findall(text))
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: kv[1])[0]
        merges.append(f"{best[0]} {best[1]}")
        new_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    tokens = [table[b] for b in range(256)] + ["".join(m.split(" ")) for m in merges]
    # Reverse the id order so ids differ from merge ranks: exercises the id remapping.
    vocab = {tok: len(tokens) - 1 - i for i, tok in enumerate(dict.fromkeys(tokens))}
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


TRAINING_TEXT = ("the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs. "
                 "naïve café café 日本 日本語 123 1234 12345 it's they're we've   spaces\n\n" * 3)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    vocab, merges = learn_tiny_bpe(TRAINING_TEXT, 120)
    root = tmp_path_factory.mktemp("tiny_bpe")
    (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                     encoding="utf-8")
    return root, vocab, merges


def test_tiny_vocab_matches_reference(tiny_files):
    root, vocab, merges = tiny_files
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=str(root / "vocab.json"),
                                merge_file=str(root / "merges.txt"))
    reference = ReferenceBPE(vocab, merges)
    for text in VARIED_TEXTS + [TRAINING_TEXT, TRAINING_TEXT[::-1]]:
        ids = tokenizer.tokenize(text)
        assert ids == reference.encode(text), text
        assert tokenizer.detokenize(ids) == text
    assert tokenizer.eod == vocab["<|endoftext|>"]
    assert tokenizer.vocab_size == len(vocab)


def test_missing_vocab_file_names_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--vocab-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "nope.json"),
                        merge_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="--merge-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "nope.json"))


@pytest.fixture(scope="module")
def gpt2_files(shared_data):
    return shared_data / "gpt2-vocab.json", shared_data / "gpt2-merges.txt"


def test_real_gpt2_matches_reference_on_varied_text(gpt2_files):
    vocab_file, merge_file = gpt2_files
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=str(vocab_file),
                                merge_file=str(merge_file))
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [l for l in merge_file.read_text(encoding="utf-8").split("\n")
              if l and not l.startswith("#version")]
    reference = ReferenceBPE(vocab, merges)
    for text in VARIED_TEXTS:
        assert tokenizer.tokenize(text) == reference.encode(text), text
    assert tokenizer.eod == 50256 and tokenizer.vocab_size == 50257
    assert tokenizer.padded_vocab_size == 50304
    # Known GPT-2 ids: "Hello world" -> [15496, 995]; the special text is not the EOD id.
    assert tokenizer.tokenize("Hello world") == [15496, 995]
    assert 50256 not in tokenizer.tokenize("<|endoftext|>")


def test_real_gpt2_matches_hf_tokenizers_on_corpus(gpt2_files, shared_data):
    from tokenizers import ByteLevelBPETokenizer

    vocab_file, merge_file = gpt2_files
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=str(vocab_file),
                                merge_file=str(merge_file))
    hf = ByteLevelBPETokenizer(str(vocab_file), str(merge_file), add_prefix_space=False,
                               trim_offsets=False)
    with open(shared_data / "corpus.jsonl", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    assert len(texts) > 100
    for i, text in enumerate(texts):
        ids = tokenizer.tokenize(text)
        assert ids == hf.encode(text).ids, f"document {i}"
        assert tokenizer.detokenize(ids) == text
