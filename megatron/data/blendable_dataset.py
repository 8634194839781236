"""Weighted mixture of datasets with upstream's greedy interleaving and cache naming."""
from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from megatron.data.dist_utils import all_ranks_succeeded, is_builder_rank
from megatron.data.index_helpers import build_blending_indices


class BlendableDataset(torch.utils.data.Dataset):
    """Sample i comes from dataset `dataset_index[i]`, at its `dataset_sample_index[i]`."""

    def __init__(self, datasets: List[torch.utils.data.Dataset], weights: Sequence[float],
                 size: int, *, data_cache_path: Optional[str] = None, group=None) -> None:
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if not 0 < len(datasets) < 255:
            raise ValueError(f"blending supports 1 to 254 datasets, got {len(datasets)}")
        self.datasets = datasets
        self.size = int(size)
        weights = np.array(weights, dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"blending weights {weights} must be non-negative, sum > 0")
        weights /= weights.sum()
        self.weights = weights
        desc = "Blendable dataset\n\nDatasets:\n"
        for dataset in datasets:
            desc += getattr(dataset, "desc", "") + "\n\n"
        desc += f"Weights: {weights}\n"
        desc += f"Size: {size}\n"
        self.desc = desc
        if data_cache_path:
            self.dataset_index, self.dataset_sample_index = self._cached_indices(
                data_cache_path, group)
        else:
            self.dataset_index, self.dataset_sample_index = build_blending_indices(
                weights, self.size)
        for d, dataset in enumerate(datasets):
            used = int(np.count_nonzero(np.asarray(self.dataset_index) == d))
            if used > len(dataset):
                raise ValueError(f"blended dataset {d} needs {used} samples but has "
                                 f"{len(dataset)}")

    def _cached_indices(self, cache_dir: str, group) -> tuple:
        desc_hash = hashlib.md5(self.desc.encode("utf-8")).hexdigest()
        desc_path = os.path.join(cache_dir, desc_hash + ".dsc")
        index_path = os.path.join(cache_dir, desc_hash + "_index.npy")
        sample_path = os.path.join(cache_dir, desc_hash + "_sample_index.npy")
        hit = os.path.isfile(index_path) and os.path.isfile(sample_path)
        error = ""
        if not hit and is_builder_rank(group):
            try:
                os.makedirs(cache_dir, exist_ok=True)
                arrays = build_blending_indices(self.weights, self.size)
                for path, array in zip((index_path, sample_path), arrays):
                    partial = f"{path}.tmp{os.getpid()}.npy"
                    np.save(partial, array, allow_pickle=False)
                    os.replace(partial, path)
                with open(desc_path, "wt", encoding="utf-8") as handle:
                    handle.write(self.desc)
            except OSError as exc:
                error = str(exc)
        if not all_ranks_succeeded(not error, group):
            raise RuntimeError(f"could not write the blending cache in {cache_dir} "
                               f"({error or 'on another rank'}); check --data-cache-path")
        return (np.load(index_path, allow_pickle=False, mmap_mode="r"),
                np.load(sample_path, allow_pickle=False, mmap_mode="r"))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for {self.size} blended samples")
        dataset = int(self.dataset_index[idx])
        sample = int(self.dataset_sample_index[idx])
        return {"dataset_idx": dataset, **self.datasets[dataset][sample]}
