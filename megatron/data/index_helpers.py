"""Index builders: the C++ helpers when available, and their numpy twins.

The twins compute the same functions differently (vectorised search instead of a scan),
so parity tests between the two are meaningful.
"""
from __future__ import annotations

import numpy as np


def build_sample_idx_numpy(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int,
                           num_epochs: int, tokens_per_epoch: int) -> np.ndarray:
    """Numpy twin of `build_sample_idx`: sample i starts at flat token i * seq_length,
    located in the first document (in doc_idx order) whose end lies beyond it."""
    if seq_length < 1 or num_epochs < 1 or tokens_per_epoch < 2:
        raise ValueError("seq_length and num_epochs must be positive and tokens_per_epoch > 1")
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    lengths = np.asarray(sizes, dtype=np.int64)[np.asarray(doc_idx)]
    ends = np.cumsum(lengths)
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    position = np.searchsorted(ends, starts, side="right")
    if num_samples and position[-1] >= len(lengths):
        raise RuntimeError("doc_idx exhausted before all samples were built")
    result = np.empty((num_samples + 1, 2), dtype=np.int64)
    result[:, 0] = position
    result[:, 1] = starts - (ends[position] - lengths[position])
    result[0] = (0, 0)
    return result


def build_blending_indices_numpy(dataset_index: np.ndarray, dataset_sample_index: np.ndarray,
                                 weights: np.ndarray, num_datasets: int, size: int,
                                 verbose: bool = False) -> None:
    """Numpy twin of `build_blending_indices` (same greedy rule, Python loop)."""
    del verbose
    weights = np.asarray(weights, dtype=np.float64)
    counts = np.zeros(num_datasets, dtype=np.int64)
    for i in range(size):
        errors = weights * max(float(i), 1.0) - counts
        best = int(np.argmax(errors))  # first maximum, as the C++ strict '>' scan
        dataset_index[i] = best
        dataset_sample_index[i] = counts[best]
        counts[best] += 1


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int,
                     num_epochs: int, tokens_per_epoch: int) -> np.ndarray:
    """int64 [num_samples + 1, 2] sample starts; C++ when available, else the numpy twin."""
    from megatron.data.helpers_loader import load_helpers

    helpers = load_helpers()
    if helpers is None:
        return build_sample_idx_numpy(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch)
    return helpers.build_sample_idx(np.ascontiguousarray(sizes, dtype=np.int32),
                                    np.ascontiguousarray(doc_idx, dtype=np.int32),
                                    int(seq_length), int(num_epochs), int(tokens_per_epoch))


def build_blending_indices(weights: np.ndarray, size: int) -> tuple:
    """(dataset_index uint8, dataset_sample_index int64) for `size` blended samples."""
    from megatron.data.helpers_loader import load_helpers

    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if not 0 < len(weights) < 255:
        raise ValueError(f"blending needs between 1 and 254 datasets, got {len(weights)}")
    dataset_index = np.zeros(size, dtype=np.uint8)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    helpers = load_helpers()
    build = (helpers.build_blending_indices if helpers is not None
             else build_blending_indices_numpy)
    build(dataset_index, dataset_sample_index, weights, len(weights), int(size), False)
    return dataset_index, dataset_sample_index
