"""BlendableDataset: weights, bounds and the upstream cache naming."""
import hashlib
import os

import numpy as np
import pytest

from megatron.data.blendable_dataset import BlendableDataset


class Constant:
    """A tiny dataset whose samples say where they came from."""

    def __init__(self, value, size):
        self.value, self.size = value, size
        self.desc = f"constant {value}"

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        if not 0 <= idx < self.size:
            raise IndexError(idx)
        return {"text": np.array([self.value, idx])}


def test_mixture_follows_weights():
    blend = BlendableDataset([Constant(0, 500), Constant(1, 500), Constant(2, 500)],
                             [2.0, 1.0, 1.0], 800)
    samples = [blend[i] for i in range(len(blend))]
    counts = np.bincount([s["dataset_idx"] for s in samples])
    np.testing.assert_allclose(counts, [400, 200, 200], atol=1)
    for d in range(3):
        seen = [int(s["text"][1]) for s in samples if s["dataset_idx"] == d]
        assert seen == list(range(len(seen)))  # each child read in order, no repeats
    with pytest.raises(IndexError):
        blend[800]


def test_child_too_small_is_an_error():
    with pytest.raises(ValueError, match="needs"):
        BlendableDataset([Constant(0, 10), Constant(1, 500)], [0.5, 0.5], 100)
    with pytest.raises(ValueError, match="weights"):
        BlendableDataset([Constant(0, 10)], [0.5, 0.5], 4)


def test_cache_files(tmp_path):
    children = [Constant(0, 100), Constant(1, 100)]
    blend = BlendableDataset(children, [0.25, 0.75], 60, data_cache_path=str(tmp_path))
    desc = ("Blendable dataset\n\nDatasets:\nconstant 0\n\nconstant 1\n\n"
            "Weights: [0.25 0.75]\nSize: 60\n")
    assert blend.desc == desc
    digest = hashlib.md5(desc.encode("utf-8")).hexdigest()
    index = np.load(os.path.join(tmp_path, digest + "_index.npy"))
    sample = np.load(os.path.join(tmp_path, digest + "_sample_index.npy"))
    assert index.dtype == np.uint8 and sample.dtype == np.int64
    assert (index == 1).sum() == 45
    again = BlendableDataset(children, [0.25, 0.75], 60, data_cache_path=str(tmp_path))
    np.testing.assert_array_equal(again.dataset_index, index)
