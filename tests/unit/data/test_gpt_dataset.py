"""GPT dataset: upstream index semantics, sample contents, caching and splits.

`reference_indices` is an independent transcription of the semantics in docs/formats.md,
section 2 (epoch loop, mgrid-tiled doc ids, token-by-token sample walk), written here.
"""
import hashlib
import os

import numpy as np
import pytest

from megatron.data import indexed_dataset
from megatron.data.gpt_dataset import build_train_valid_test_datasets, get_train_valid_test_split


def reference_indices(documents, sizes, num_samples, seq_length, seed):
    tokens = int(sum(sizes[d] for d in documents))
    epochs = 0
    while True:
        epochs += 1
        if (epochs * tokens - 1) // seq_length >= num_samples:
            break
    separate = False
    if epochs > 1:
        from_first = ((epochs - 1) * tokens - 1) // seq_length
        separate = num_samples - from_first < int(0.80 * ((tokens - 1) // seq_length))
    rng = np.random.RandomState(seed)

    def tiled(n):
        grid = np.mgrid[0:n, 0:len(documents)][1]
        grid[:] = documents
        out = grid.reshape(-1).astype(np.int32)
        rng.shuffle(out)
        return out

    doc_idx = (np.concatenate([tiled(epochs - 1), tiled(1)]) if separate else tiled(epochs))
    flat_doc, flat_off = [], []  # the (doc_idx position, offset) of every flat token
    for pos, doc in enumerate(doc_idx):
        for off in range(sizes[doc]):
            flat_doc.append(pos)
            flat_off.append(off)
    total = (epochs * tokens - 1) // seq_length
    sample_idx = np.array([[flat_doc[i * seq_length], flat_off[i * seq_length]]
                           for i in range(total + 1)])
    if sizes[doc_idx[0]] == 0:
        sample_idx[0] = (0, 0)
    first = from_first if separate else total
    dtype = np.uint32
    a = np.arange(first, dtype=dtype)
    rng.shuffle(a)
    if first < total:
        b = np.arange(first, total, dtype=dtype)
        rng.shuffle(b)
        a = np.concatenate([a, b])
    return doc_idx, sample_idx, a, epochs, separate


def write_dataset(prefix, docs):
    builder = indexed_dataset.MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(doc)
    builder.finalize(prefix + ".idx")


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=int(rng.integers(1, 60))) for _ in range(40)]
    prefix = str(tmp_path / "corpus_text_document")
    write_dataset(prefix, docs)
    return prefix, docs


def test_split_boundaries():
    assert get_train_valid_test_split("949,50,1", 387) == [0, 368, 387, 387]
    assert get_train_valid_test_split("98,2", 100) == [0, 98, 100, 100]
    # 3.33 rounds to 3 each (sum 9); the shortfall of 1 is added to every boundary.
    assert get_train_valid_test_split("1/1/1", 10) == [0, 4, 7, 10]
    assert get_train_valid_test_split("100", 7) == [0, 7, 7, 7]
    with pytest.raises(ValueError, match="--split"):
        get_train_valid_test_split("a,b", 10)


@pytest.mark.parametrize("num_samples,seq_length", [(10, 16), (90, 16), (270, 7), (3, 200)])
def test_indices_match_reference_and_samples_cover_tokens(corpus, num_samples, seq_length):
    prefix, docs = corpus
    train, valid, test = build_train_valid_test_datasets(
        data_prefix=[prefix], splits_string="80,20,0",
        train_valid_test_num_samples=[num_samples, 5, 0], seq_length=seq_length, seed=1234)
    assert test is None
    sizes = np.array([len(d) for d in docs], dtype=np.int32)
    documents = np.arange(0, 32, dtype=np.int32)
    doc_idx, sample_idx, shuffle_idx, epochs, _ = reference_indices(
        documents, sizes, num_samples, seq_length, 1234)
    np.testing.assert_array_equal(train.doc_idx, doc_idx)
    np.testing.assert_array_equal(train.sample_idx, sample_idx)
    np.testing.assert_array_equal(train.shuffle_idx, shuffle_idx)
    assert train.shuffle_idx.dtype == np.uint32 and train.sample_idx.dtype == np.int64
    assert len(train) >= num_samples
    # Every sample is seq_length + 1 consecutive tokens of the doc_idx-ordered stream.
    flat = np.concatenate([docs[d] for d in doc_idx]).astype(np.int64)
    for i in range(len(train)):
        s = int(shuffle_idx[i])
        tokens = train[i]["text"]
        assert tokens.dtype == np.int64 and tokens.shape == (seq_length + 1,)
        np.testing.assert_array_equal(tokens, flat[s * seq_length:s * seq_length + seq_length + 1])
    assert sorted(int(s) for s in train.shuffle_idx) == list(range(len(train)))
    assert valid.doc_idx.min() >= 32


def test_separate_last_epoch_is_exercised(corpus):
    prefix, docs = corpus
    sizes = np.array([len(d) for d in docs], dtype=np.int32)
    _, _, _, epochs, separate = reference_indices(np.arange(32), sizes, 90, 16, 1234)
    assert epochs > 1 and separate  # the (90, 16) case above covers the separate branch
    _, _, _, epochs, separate = reference_indices(np.arange(32), sizes, 270, 7, 1234)
    assert epochs > 1 and not separate  # and (270, 7) the joint last epoch


def test_cache_names_and_reuse(corpus, tmp_path):
    prefix, _ = corpus
    kwargs = dict(data_prefix=[prefix], splits_string="949,50,1",
                  train_valid_test_num_samples=[50, 1, 1], seq_length=8, seed=7)
    train, _, _ = build_train_valid_test_datasets(**kwargs)
    tokens = sum(int(s) for s in indexed_dataset.MMapIndexedDataset(prefix).sizes[:38])
    epochs = -(-(50 * 8 + 1) // tokens)
    desc = (f"GPT Dataset\n\nData prefix {prefix}\nDataset name train\nNumber of samples 50\n"
            f"Number of epochs {epochs}\nSequence length 8\nRandom seed 7\nSplit 949,50,1\n")
    digest = hashlib.md5(desc.encode("utf-8")).hexdigest()
    cache = os.path.join(os.path.dirname(prefix), "index-cache")
    assert train.cache_built and train.cache_dir == cache
    with open(os.path.join(cache, digest + ".dsc")) as handle:
        assert handle.read() == desc
    for suffix in ("_doc_idx.npy", "_sample_idx.npy", "_shuffle_idx.npy"):
        assert os.path.isfile(os.path.join(cache, digest + suffix))
    mtime = os.path.getmtime(os.path.join(cache, digest + "_sample_idx.npy"))
    again, _, _ = build_train_valid_test_datasets(**kwargs)
    assert not again.cache_built
    assert os.path.getmtime(os.path.join(cache, digest + "_sample_idx.npy")) == mtime
    np.testing.assert_array_equal(again.shuffle_idx, train.shuffle_idx)
    assert isinstance(again.sample_idx, np.memmap)


def test_data_cache_path_is_used_when_index_cache_missing(corpus, tmp_path):
    prefix, _ = corpus
    elsewhere = str(tmp_path / "elsewhere")
    train, _, _ = build_train_valid_test_datasets(
        data_prefix=prefix, splits_string="1,0,0", train_valid_test_num_samples=[5, 0, 0],
        seq_length=8, seed=1, data_cache_path=elsewhere)
    assert train.cache_dir == elsewhere and train.cache_built
    assert not os.path.exists(os.path.join(os.path.dirname(prefix), "index-cache"))


def test_separate_paths_and_blending(corpus, tmp_path):
    prefix, docs = corpus
    other = str(tmp_path / "other_text_document")
    write_dataset(other, [np.full(30, 7) for _ in range(20)])
    train, valid, test = build_train_valid_test_datasets(
        data_prefix=None, splits_string="969,30,1", train_valid_test_num_samples=[40, 6, 0],
        seq_length=8, seed=3, train_data_prefix=["0.3", prefix, "0.7", other],
        valid_data_prefix=[other])
    assert test is None
    assert len(valid) >= 6 and valid[0]["text"].tolist() == [7] * 9
    # Blend: each child gets ceil(n * w * 1.005) samples; the mixture follows the weights.
    assert len(train) == 13 + 29
    sources = np.array([train[i]["dataset_idx"] for i in range(len(train))])
    assert abs((sources == 1).sum() - 0.7 * len(train)) <= 1
    for i in range(len(train)):
        if sources[i] == 1:
            assert train[i]["text"].tolist() == [7] * 9


def test_bad_inputs(tmp_path, corpus):
    prefix, _ = corpus
    with pytest.raises(FileNotFoundError, match="--data-path"):
        build_train_valid_test_datasets(data_prefix=[str(tmp_path / "missing")],
                                        splits_string="1", train_valid_test_num_samples=[1, 0, 0],
                                        seq_length=4, seed=1)
    with pytest.raises(ValueError, match="weight/prefix pairs"):
        build_train_valid_test_datasets(data_prefix=["0.5", prefix, "0.5"], splits_string="1",
                                        train_valid_test_num_samples=[1, 0, 0], seq_length=4,
                                        seed=1)
