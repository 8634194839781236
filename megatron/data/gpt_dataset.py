"""GPT pretraining dataset: fixed-length samples cut from shuffled documents.

The doc/sample/shuffle index arrays, their random stream and their cache names follow
Megatron-DeepSpeed exactly (docs/formats.md, section 2), so existing `index-cache/` folders are
reused and fresh builds give the same arrays element for element.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from megatron.data import indexed_dataset as idx_ds
from megatron.data.blendable_dataset import BlendableDataset
from megatron.core.utils import print_rank_0
from megatron.data.dist_utils import all_ranks_succeeded, is_builder_rank
from megatron.data.index_helpers import build_sample_idx

Split = Tuple[Optional[torch.utils.data.Dataset], Optional[torch.utils.data.Dataset],
              Optional[torch.utils.data.Dataset]]
SPLIT_NAMES = ("train", "valid", "test")


def get_train_valid_test_split(splits_string: str, size: int) -> List[int]:
    """Document boundaries [0, a, b, size] for `--split` weights such as '949,50,1'."""
    separator = "," if "," in splits_string else "/"
    try:
        weights = [float(s) for s in splits_string.split(separator)]
    except ValueError as error:
        raise ValueError(f"--split {splits_string!r}: expected numbers such as 949,50,1") from error
    weights = (weights + [0.0, 0.0, 0.0])[:3]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--split {splits_string!r}: weights must be non-negative, sum > 0")
    total = sum(weights)
    bounds = [0]
    for weight in weights:
        bounds.append(bounds[-1] + int(round(weight / total * float(size))))
    diff = bounds[-1] - size
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def parse_weighted_prefixes(data_prefix: Sequence[str]) -> Tuple[List[str], List[float]]:
    """`[w1, p1, w2, p2, ...]` into prefixes and normalised weights."""
    if len(data_prefix) % 2:
        raise ValueError(f"--data-path {' '.join(data_prefix)}: blending needs weight/prefix "
                         "pairs")
    try:
        weights = [float(w) for w in data_prefix[0::2]]
    except ValueError as error:
        raise ValueError(f"--data-path {' '.join(data_prefix)}: bad weight") from error
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--data-path weights {weights} must be non-negative with a positive sum")
    total = sum(weights)
    return [p.strip() for p in data_prefix[1::2]], [w / total for w in weights]


def blended_num_samples(weights: Sequence[float], num_samples: int) -> List[int]:
    """Per-dataset sample counts with upstream's 0.5% margin."""
    return [int(math.ceil(num_samples * w * 1.005)) for w in weights]


def _index_description(prefix: str, name: str, num_samples: int, num_epochs: int,
                       seq_length: int, seed: int, splits_string: str) -> str:
    return ("GPT Dataset\n\n"
            f"Data prefix {prefix}\n"
            f"Dataset name {name}\n"
            f"Number of samples {num_samples}\n"
            f"Number of epochs {num_epochs}\n"
            f"Sequence length {seq_length}\n"
            f"Random seed {seed}\n"
            f"Split {splits_string}\n")


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest e with (e * tokens_per_epoch - 1) // seq_length >= num_samples."""
    if tokens_per_epoch < 2:
        raise ValueError(f"a dataset split has {tokens_per_epoch} tokens; at least 2 are needed")
    epochs = max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))
    while epochs > 1 and ((epochs - 1) * tokens_per_epoch - 1) // seq_length >= num_samples:
        epochs -= 1
    return epochs


def build_doc_idx(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                  separate_last_epoch: bool) -> np.ndarray:
    """Document ids tiled over epochs and shuffled (the last epoch apart when separate)."""
    if not separate_last_epoch or num_epochs == 1:
        doc_idx = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
        rng.shuffle(doc_idx)
        return doc_idx
    first = build_doc_idx(documents, num_epochs - 1, rng, False)
    last = build_doc_idx(documents, 1, rng, False)
    return np.concatenate((first, last))


def build_shuffle_idx(num_samples: int, total_size: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """Permutation of [0, num_samples) then, shuffled apart, of [num_samples, total_size)."""
    dtype = np.int64 if total_size >= np.iinfo(np.uint32).max - 1 else np.uint32
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_index_arrays(documents: np.ndarray, sizes: np.ndarray, *, num_samples: int,
                       seq_length: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc_idx, sample_idx, shuffle_idx) exactly as upstream builds them."""
    tokens_per_epoch = int(np.sum(sizes[documents], dtype=np.int64))
    num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    separate_last_epoch = False
    from_first = 0
    if num_epochs > 1:
        from_first = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        last_epoch_samples = num_samples - from_first
        per_epoch = (tokens_per_epoch - 1) // seq_length
        separate_last_epoch = last_epoch_samples < int(0.80 * per_epoch)
    doc_idx = build_doc_idx(documents, num_epochs, rng, separate_last_epoch)
    sample_idx = build_sample_idx(np.asarray(sizes, dtype=np.int32), doc_idx, seq_length,
                                  num_epochs, tokens_per_epoch)
    total = sample_idx.shape[0] - 1
    shuffle_idx = build_shuffle_idx(from_first if separate_last_epoch else total, total, rng)
    return doc_idx, sample_idx, shuffle_idx


def _cache_paths(directory: str, desc_hash: str) -> dict:
    return {"desc": os.path.join(directory, desc_hash + ".dsc"),
            "doc": os.path.join(directory, desc_hash + "_doc_idx.npy"),
            "sample": os.path.join(directory, desc_hash + "_sample_idx.npy"),
            "shuffle": os.path.join(directory, desc_hash + "_shuffle_idx.npy")}


def _write_cache(paths: dict, desc: str, arrays: Sequence[np.ndarray]) -> None:
    os.makedirs(os.path.dirname(paths["desc"]), exist_ok=True)
    for key, array in zip(("doc", "sample", "shuffle"), arrays):
        partial = f"{paths[key]}.tmp{os.getpid()}.npy"
        np.save(partial, array, allow_pickle=False)
        os.replace(partial, paths[key])
    with open(paths["desc"], "wt", encoding="utf-8") as handle:
        handle.write(desc)


def _load_cache(paths: dict, desc: str, *, num_doc_idx: int,
                num_samples: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three index arrays of a cache, checked against what this run needs: a damaged file
    or one left by another configuration is named, with the way out (delete, rebuild)."""
    files = os.path.join(os.path.dirname(paths["desc"]),
                         os.path.basename(paths["desc"])[:-len(".dsc")] + "*")

    def refuse(path: str, why: str) -> ValueError:
        return ValueError(f"data index cache {path} {why}; delete {files} and it is rebuilt "
                          "on the next start")

    try:
        with open(paths["desc"], encoding="utf-8") as handle:
            recorded = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise refuse(paths["desc"], f"is unreadable ({error})") from None
    if recorded != desc:
        raise refuse(paths["desc"], "describes another configuration")
    arrays = []
    for key in ("doc", "sample", "shuffle"):
        try:
            arrays.append(np.load(paths[key], allow_pickle=False, mmap_mode="r"))
        except (OSError, ValueError, EOFError) as error:
            raise refuse(paths[key], f"is damaged ({error})") from None
    doc_idx, sample_idx, shuffle_idx = arrays
    if doc_idx.ndim != 1 or len(doc_idx) != num_doc_idx:
        raise refuse(paths["doc"], f"holds {doc_idx.shape} entries, not the {num_doc_idx} of "
                                   "this configuration")
    if sample_idx.ndim != 2 or sample_idx.shape[1] != 2 or sample_idx.shape[0] - 1 < num_samples:
        raise refuse(paths["sample"], f"has shape {sample_idx.shape}, not ({num_samples} or "
                                      "more + 1, 2) for this configuration")
    if shuffle_idx.ndim != 1 or len(shuffle_idx) != sample_idx.shape[0] - 1:
        raise refuse(paths["shuffle"], f"holds {shuffle_idx.shape} entries, not the "
                                       f"{sample_idx.shape[0] - 1} samples of {paths['sample']}")
    return doc_idx, sample_idx, shuffle_idx


class GPTDataset(torch.utils.data.Dataset):
    """Samples of `seq_length + 1` tokens from `documents` of an indexed dataset."""

    def __init__(self, name: str, data_prefix: str, documents: np.ndarray, indexed_dataset,
                 splits_string: str, num_samples: int, seq_length: int, seed: int, *,
                 data_cache_path: Optional[str] = None, group=None) -> None:
        self.name = name
        self.indexed_dataset = indexed_dataset
        if len(documents) == 0 or documents.min() < 0 or documents.max() >= len(indexed_dataset):
            raise ValueError(f"{data_prefix}: document ids outside [0, {len(indexed_dataset)})")
        sizes = indexed_dataset.sizes
        tokens_per_epoch = int(np.sum(sizes[documents], dtype=np.int64))
        num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
        self.desc = _index_description(data_prefix, name, num_samples, num_epochs, seq_length,
                                       seed, splits_string)
        self.desc_hash = hashlib.md5(self.desc.encode("utf-8")).hexdigest()
        directories = [os.path.join(os.path.dirname(data_prefix), "index-cache")]
        if data_cache_path is not None:
            directories.append(data_cache_path)
        paths = {}
        found = False
        for directory in directories:
            paths = _cache_paths(directory, self.desc_hash)
            if all(os.path.isfile(p) for p in paths.values()):
                found = True
                break
        self.cache_built = False
        error = ""
        if not found and is_builder_rank(group):
            start = time.time()
            try:
                arrays = build_index_arrays(documents, sizes, num_samples=num_samples,
                                            seq_length=seq_length, seed=seed)
                _write_cache(paths, self.desc, arrays)
                self.cache_built = True
            except Exception as exc:  # noqa: BLE001 - the other ranks wait: tell them
                error = f"{type(exc).__name__}: {exc}"
            print_rank_0(f" > built {name} index cache for {data_prefix} in "
                       f"{time.time() - start:.2f} s ({os.path.dirname(paths['desc'])})")
        if not all_ranks_succeeded(not error, group):
            raise ValueError(f"could not write the data index cache in "
                             f"{os.path.dirname(paths['desc'])} ({error or 'on another rank'});"
                             " set --data-cache-path to a writable directory")
        self.doc_idx, self.sample_idx, self.shuffle_idx = _load_cache(
            paths, self.desc, num_doc_idx=num_epochs * len(documents), num_samples=num_samples)
        self.cache_dir = os.path.dirname(paths["desc"])

    def __len__(self) -> int:
        return int(self.sample_idx.shape[0]) - 1

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {len(self)} samples")
        sample = int(self.shuffle_idx[idx])
        doc_first, offset_first = (int(v) for v in self.sample_idx[sample])
        doc_last, offset_last = (int(v) for v in self.sample_idx[sample + 1])
        get = self.indexed_dataset.get
        if doc_first == doc_last:
            tokens = get(int(self.doc_idx[doc_first]), offset=offset_first,
                         length=offset_last - offset_first + 1)
        else:
            parts = [get(int(self.doc_idx[doc_first]), offset=offset_first)]
            parts.extend(get(int(self.doc_idx[i])) for i in range(doc_first + 1, doc_last))
            parts.append(get(int(self.doc_idx[doc_last]), length=offset_last + 1))
            tokens = np.concatenate(parts)
        return {"text": np.array(tokens, dtype=np.int64)}


def _as_list(prefix: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    if prefix is None:
        return None
    return [prefix] if isinstance(prefix, str) else list(prefix)


def _open(prefix: str, flag: str = "--data-path"):
    if not idx_ds.exists(prefix):
        raise FileNotFoundError(f"{flag} {prefix}: {prefix}.bin/.idx not found")
    dataset = idx_ds.make_dataset(prefix, "infer")
    if len(dataset) == 0:
        raise ValueError(f"{flag} {prefix}: {prefix}.idx holds no documents")
    return dataset


def _names(prefixes: List[str]) -> List[str]:
    return prefixes if len(prefixes) <= 1 else parse_weighted_prefixes(prefixes)[0]


def check_dataset_inputs(*, data_prefix: Union[str, Sequence[str], None], splits_string: str,
                         train_valid_test_num_samples: Sequence[int],
                         train_data_prefix: Union[str, Sequence[str], None] = None,
                         valid_data_prefix: Union[str, Sequence[str], None] = None,
                         test_data_prefix: Union[str, Sequence[str], None] = None) -> None:
    """Open every dataset named and check that `--split` gives training documents, before any
    index cache is written. No collective: the same files give every rank the same answer,
    so a run can call this before its process group exists."""
    prefixes = _as_list(data_prefix)
    if not prefixes:
        for flag, paths in (("--train-data-path", train_data_prefix),
                            ("--valid-data-path", valid_data_prefix),
                            ("--test-data-path", test_data_prefix)):
            for prefix in _names(_as_list(paths) or []):
                _open(prefix, flag)
        return
    empty_in = {name: [] for name in SPLIT_NAMES}
    names = _names(prefixes)
    for prefix in names:
        bounds = get_train_valid_test_split(splits_string, len(_open(prefix)))
        for i, name in enumerate(SPLIT_NAMES):
            if bounds[i + 1] <= bounds[i]:
                empty_in[name].append(prefix)
    if empty_in["train"] and train_valid_test_num_samples[0] > 0:
        prefix = empty_in["train"][0]
        raise ValueError(f"--split {splits_string} leaves no training documents in --data-path "
                         f"{prefix} ({len(_open(prefix))} documents); give train a larger share")
    for name in SPLIT_NAMES:
        if empty_in[name] and len(empty_in[name]) != len(names):
            raise ValueError(f"--split {splits_string} leaves the {name} split of --data-path "
                             f"{empty_in[name][0]} empty while other blended datasets have one;"
                             " adjust --split or the blend")


def _split_datasets(prefix: str, splits_string: str, num_samples: Sequence[int], seq_length: int,
                    seed: int, data_cache_path: Optional[str], group) -> list:
    indexed = _open(prefix)
    bounds = get_train_valid_test_split(splits_string, len(indexed))
    result = []
    for i, name in enumerate(SPLIT_NAMES):
        if bounds[i + 1] <= bounds[i]:
            result.append(None)
            continue
        documents = np.arange(bounds[i], bounds[i + 1], dtype=np.int32)
        result.append(GPTDataset(name, prefix, documents, indexed, splits_string,
                                 int(num_samples[i]), seq_length, seed,
                                 data_cache_path=data_cache_path, group=group))
    return result


def _blend(name: str, datasets: list, weights: List[float], size: int,
           data_cache_path: Optional[str], group) -> Optional[torch.utils.data.Dataset]:
    present = [d for d in datasets if d is not None]
    if not present:
        return None
    if len(present) != len(datasets):
        raise ValueError(f"blending {name}: some --data-path datasets have an empty {name} "
                         "split; adjust --split or the blend")
    return BlendableDataset(present, weights, size, data_cache_path=data_cache_path, group=group)


def _whole_dataset(name: str, prefixes: List[str], splits_string: str, num_samples: int,
                   seq_length: int, seed: int, data_cache_path: Optional[str], group):
    def single(prefix: str, samples: int) -> GPTDataset:
        indexed = _open(prefix)
        documents = np.arange(len(indexed), dtype=np.int32)
        return GPTDataset(name, prefix, documents, indexed, splits_string, samples, seq_length,
                          seed, data_cache_path=data_cache_path, group=group)

    if len(prefixes) == 1:
        return single(prefixes[0], num_samples)
    names, weights = parse_weighted_prefixes(prefixes)
    counts = blended_num_samples(weights, num_samples)
    datasets = [single(p, c) for p, c in zip(names, counts)]
    return _blend(name, datasets, weights, sum(counts), data_cache_path, group)


def build_train_valid_test_datasets(*, data_prefix: Union[str, Sequence[str], None],
                                    splits_string: str,
                                    train_valid_test_num_samples: Sequence[int],
                                    seq_length: int, seed: int,
                                    data_cache_path: Optional[str] = None,
                                    train_data_prefix: Union[str, Sequence[str], None] = None,
                                    valid_data_prefix: Union[str, Sequence[str], None] = None,
                                    test_data_prefix: Union[str, Sequence[str], None] = None,
                                    group=None) -> Split:
    """Train/valid/test datasets from `--data-path` + `--split`, or from separate paths.

    When torch.distributed is initialised every rank of `group` (default: the world) must
    call this; the lowest rank builds missing index caches while the others wait.
    """
    if len(train_valid_test_num_samples) != 3:
        raise ValueError("train_valid_test_num_samples needs three counts")
    if seq_length < 1:
        raise ValueError(f"--seq-length must be positive, got {seq_length}")
    check_dataset_inputs(data_prefix=data_prefix, splits_string=splits_string,
                         train_valid_test_num_samples=train_valid_test_num_samples,
                         train_data_prefix=train_data_prefix, valid_data_prefix=valid_data_prefix,
                         test_data_prefix=test_data_prefix)
    prefixes = _as_list(data_prefix)
    if prefixes:
        if len(prefixes) == 1:
            return tuple(_split_datasets(prefixes[0], splits_string, train_valid_test_num_samples,
                                         seq_length, seed, data_cache_path, group))
        names, weights = parse_weighted_prefixes(prefixes)
        per_dataset = [blended_num_samples(weights, n) for n in train_valid_test_num_samples]
        children = [_split_datasets(p, splits_string, [c[i] for c in per_dataset], seq_length,
                                    seed, data_cache_path, group) for i, p in enumerate(names)]
        return tuple(_blend(SPLIT_NAMES[s], [c[s] for c in children], weights,
                            sum(per_dataset[s]), data_cache_path, group) for s in range(3))
    separate = (_as_list(train_data_prefix), _as_list(valid_data_prefix),
                _as_list(test_data_prefix))
    if not any(separate):
        raise ValueError("give --data-path or --train-data-path/--valid-data-path/"
                         "--test-data-path")
    return tuple(None if paths is None else
                 _whole_dataset(SPLIT_NAMES[i], paths, splits_string,
                                int(train_valid_test_num_samples[i]), seq_length, seed,
                                data_cache_path, group)
                 for i, paths in enumerate(separate))
