"""C++ helpers against their numpy twins, and both against hand-worked answers."""
import numpy as np
import pytest

from megatron.data import index_helpers
from megatron.data.helpers_loader import load_helpers


@pytest.fixture(scope="module")
def cpp():
    helpers = load_helpers()
    if helpers is None:
        pytest.skip("no C++ compiler here; the numpy twins are used")
    return helpers


def test_sample_idx_hand_worked():
    # Documents of 3, 5, 2 tokens in order 0, 1, 2 (10 tokens); seq_length 3:
    # (10 - 1) // 3 = 3 samples starting at flat tokens 0, 3, 6, 9.
    sizes = np.array([3, 5, 2], dtype=np.int32)
    doc_idx = np.array([0, 1, 2], dtype=np.int32)
    expected = [[0, 0], [1, 0], [1, 3], [2, 1]]
    # Flat token 3 is doc 1 offset 0. The C++ rule puts a boundary that coincides with the
    # end of a document's last token on that document: flat 2 would be (0, 2).
    got = index_helpers.build_sample_idx_numpy(sizes, doc_idx, 3, 1, 10)
    assert got.tolist() == expected
    got = index_helpers.build_sample_idx_numpy(sizes, doc_idx, 2, 1, 10)
    assert got.tolist() == [[0, 0], [0, 2], [1, 1], [1, 3], [2, 0]]


def test_sample_idx_parity_random(cpp):
    rng = np.random.default_rng(1234)
    for _ in range(300):
        num_docs = int(rng.integers(1, 40))
        sizes = rng.integers(0, 30, size=num_docs).astype(np.int32)
        sizes[rng.integers(0, num_docs)] += 2  # at least 2 tokens in the epoch
        epochs = int(rng.integers(1, 4))
        doc_idx = np.tile(np.arange(num_docs, dtype=np.int32), epochs)
        rng.shuffle(doc_idx)
        seq_length = int(rng.integers(1, 40))
        tokens = int(sizes.sum())
        a = cpp.build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens)
        b = index_helpers.build_sample_idx_numpy(sizes, doc_idx, seq_length, epochs, tokens)
        assert a.dtype == np.int64 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_blending_parity_and_weights(cpp):
    rng = np.random.default_rng(7)
    for _ in range(30):
        num = int(rng.integers(1, 6))
        weights = rng.random(num) + 0.01
        weights /= weights.sum()
        size = int(rng.integers(1, 3000))
        outputs = []
        for build in (cpp.build_blending_indices, index_helpers.build_blending_indices_numpy):
            index = np.zeros(size, dtype=np.uint8)
            sample = np.zeros(size, dtype=np.int64)
            build(index, sample, weights, num, size, False)
            outputs.append((index, sample))
        np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
        np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
        index, sample = outputs[0]
        counts = np.bincount(index, minlength=num)
        # The greedy rule keeps every dataset within 1 sample (plus rounding) of its share.
        assert np.all(np.abs(counts - weights * size) <= num), (counts, weights * size)
        for d in range(num):
            np.testing.assert_array_equal(sample[index == d], np.arange(counts[d]))


def test_blending_hand_worked():
    index, sample = index_helpers.build_blending_indices(np.array([0.75, 0.25]), 8)
    assert index.tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    assert sample.tolist() == [0, 0, 1, 2, 3, 1, 4, 5]


@pytest.mark.slow
def test_first_use_compilation_into_cache(tmp_path):
    """The path taken when the extension was not built at install time (about 10 s)."""
    import shutil

    from megatron.data.helpers_loader import _load_from, compile_helpers

    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    path = compile_helpers(str(tmp_path))
    assert path.startswith(str(tmp_path)) and compile_helpers(str(tmp_path)) == path
    module = _load_from(path)
    sizes = np.array([3, 5, 2], dtype=np.int32)
    doc_idx = np.array([0, 1, 2], dtype=np.int32)
    assert module.build_sample_idx(sizes, doc_idx, 3, 1, 10).tolist() == [[0, 0], [1, 0],
                                                                           [1, 3], [2, 1]]
