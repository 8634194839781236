"""tools/preprocess_data.py and tools/merge_datasets.py on small corpora."""
import gzip
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron.data.indexed_dataset import MMapIndexedDataset

TOOLS = Path(__file__).resolve().parents[3] / "tools"


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # worker processes unpickle the tool's functions by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def preprocess():
    return load_tool("preprocess_data")


def null_args(input_path, prefix, *extra):
    return ["--input", str(input_path), "--output-prefix", str(prefix), "--tokenizer-type",
            "NullTokenizer", "--vocab-size", "1000", "--append-eod", *extra]


def test_bad_lines_are_reported_and_skipped(tmp_path, preprocess, capsys):
    lines = ['{"text": "1 2 3"}', '{"text": "4 5', '{"other": "6"}', '{"text": "   "}', '',
             '{"text": "7 8"}', '[1, 2]']
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    assert preprocess.main(null_args(corpus, tmp_path / "out", "--workers", "1")) == 0
    captured = capsys.readouterr()
    for number, reason in [(2, "malformed JSON"), (3, "missing key 'text'"),
                           (4, "empty document"), (5, "blank line"), (7, "JSON value is not an object")]:
        assert f"c.jsonl:{number}: {reason}" in captured.err
    assert "2 documents, 7 tokens, 5 skipped" in captured.out
    dataset = MMapIndexedDataset(str(tmp_path / "out_text_document"))
    # NullTokenizer's EOD is vocab_size (1000); sizes count it (corrected EOD form).
    assert [dataset[i].tolist() for i in range(2)] == [[1, 2, 3, 1000], [7, 8, 1000]]
    assert dataset.sizes.tolist() == [4, 3] and dataset.dtype == np.uint16


def test_strict_failure_leaves_no_files(tmp_path, preprocess, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "1 2"}\n{"text": oops}\n')
    assert preprocess.main(null_args(corpus, tmp_path / "out", "--workers", "1", "--strict")) == 1
    assert "c.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["c.jsonl"]


def test_workers_and_gzip_give_identical_output(tmp_path, preprocess):
    rng = np.random.default_rng(5)
    docs = [" ".join(str(x) for x in rng.integers(0, 999, size=int(rng.integers(1, 50))))
            for _ in range(300)]
    text = "".join(json.dumps({"text": d, "title": d[:7]}) + "\n" for d in docs)
    (tmp_path / "c.jsonl").write_text(text)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as handle:
        handle.write(text)
    keys = ["--json-keys", "text", "title", "--log-interval", "50"]
    assert preprocess.main(null_args(tmp_path / "c.jsonl", tmp_path / "one", "--workers", "1",
                                     *keys)) == 0
    assert preprocess.main(null_args(tmp_path / "c.jsonl.gz", tmp_path / "two",
                                     "--workers", "2", *keys)) == 0
    for key in ("text", "title"):
        for ext in (".bin", ".idx"):
            one = (tmp_path / f"one_{key}_document{ext}").read_bytes()
            assert one == (tmp_path / f"two_{key}_document{ext}").read_bytes()
    dataset = MMapIndexedDataset(str(tmp_path / "one_text_document"))
    assert len(dataset) == 300
    assert dataset[17].tolist() == [int(x) for x in docs[17].split()] + [1000]


def test_split_sentences_without_nltk_is_a_clear_error(tmp_path, preprocess, capsys):
    try:
        import nltk  # noqa: F401
        pytest.skip("nltk is installed here")
    except ImportError:
        pass
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "1 2"}\n')
    assert preprocess.main(null_args(corpus, tmp_path / "o", "--workers", "2",
                                     "--split-sentences")) == 1
    assert "nltk" in capsys.readouterr().err


def test_merge_datasets_tool(tmp_path, preprocess):
    merge = load_tool("merge_datasets")
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, body in enumerate(["1 2\n3", "4 5 6"]):
        corpus = tmp_path / f"c{i}.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in body.split("\n")))
        assert preprocess.main(null_args(corpus, parts / f"p{i}", "--workers", "1")) == 0
    assert merge.main(["--input", str(parts), "--output-prefix", str(tmp_path / "m")]) == 0
    merged = MMapIndexedDataset(str(tmp_path / "m"))
    assert [merged[i].tolist() for i in range(3)] == [[1, 2, 1000], [3, 1000], [4, 5, 6, 1000]]
    assert merged.doc_idx.tolist() == [0, 1, 2, 3]
    assert merge.main(["--input", str(tmp_path / "nope"), "--output-prefix", "x"]) == 1


def test_reference_corpus_end_to_end(tmp_path, preprocess, shared_data, capsys):
    from megatron.data.gpt_dataset import build_train_valid_test_datasets
    from megatron.tokenizer import build_tokenizer

    flags = ["--vocab-file", str(shared_data / "gpt2-vocab.json"),
             "--merge-file", str(shared_data / "gpt2-merges.txt")]
    prefix = tmp_path / "gpt2"
    assert preprocess.main(["--input", str(shared_data / "corpus.jsonl"), "--output-prefix",
                            str(prefix), "--tokenizer-type", "GPT2BPETokenizer", *flags,
                            "--append-eod", "--workers", "2"]) == 0
    assert "387 documents" in capsys.readouterr().out
    dataset = MMapIndexedDataset(f"{prefix}_text_document")
    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file=flags[1], merge_file=flags[3])
    texts = [json.loads(l)["text"] for l in open(shared_data / "corpus.jsonl", encoding="utf-8")]
    assert len(dataset) == 387 and dataset.dtype == np.uint16
    assert int(dataset.sizes.sum()) * 2 == os.path.getsize(f"{prefix}_text_document.bin")
    for i in (0, 200, 386):
        assert dataset[i].tolist() == tokenizer.tokenize(texts[i]) + [50256]
    train, valid, test = build_train_valid_test_datasets(
        data_prefix=[f"{prefix}_text_document"], splits_string="949,50,1",
        train_valid_test_num_samples=[100, 10, 0], seq_length=1024, seed=1234)
    assert train[0]["text"].shape == (1025,) and valid[0]["text"].shape == (1025,)
    assert test is None  # 1/1000 of 387 documents rounds to none
