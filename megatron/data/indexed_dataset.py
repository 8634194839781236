"""Mmap indexed dataset (`<prefix>.idx` + `<prefix>.bin`), byte-compatible with upstream.

Layout (docs/formats.md, section 1): the index holds magic, version, dtype code, the number of
sequences N and of `doc_idx` entries D, then int32 sizes[N], int64 pointers[N] (byte
offsets into `.bin`), int64 doc_idx[D]. The `.bin` is the raw concatenation of the tokens.
Readers memory-map both files. The legacy `TNTIDX` index is read by `LegacyIndexedDataset`.
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import BinaryIO, List, Optional, Union

import numpy as np

MMAP_MAGIC = b"MMIDIDX\x00\x00"
LEGACY_MAGIC = b"TNTIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")


def dtype_code(dtype: np.dtype) -> int:
    """The on-disk code of a numpy dtype."""
    for code, candidate in DTYPES.items():
        if np.dtype(candidate) == np.dtype(dtype):
            return code
    raise ValueError(f"dtype {dtype} has no indexed-dataset code")


def best_fitting_dtype(vocab_size: Optional[int]) -> type:
    """uint16 when every id fits below 65500, else int32 (upstream's choice)."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def exists(prefix: str) -> bool:
    """True when both `<prefix>.idx` and `<prefix>.bin` exist."""
    return os.path.isfile(index_file_path(prefix)) and os.path.isfile(data_file_path(prefix))


def _require_files(prefix: str) -> None:
    for path in (index_file_path(prefix), data_file_path(prefix)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"indexed dataset file {path} not found (prefix {prefix!r})")


class MMapIndexedDataset:
    """Read-only view of an mmap indexed dataset; `get` slices one sequence without copying."""

    def __init__(self, prefix: str) -> None:
        _require_files(prefix)
        self.prefix = prefix
        idx_path = index_file_path(prefix)
        with open(idx_path, "rb") as handle:
            header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise ValueError(f"{idx_path}: file too short for an index header")
        magic, version, code, count, doc_count = _HEADER.unpack(header)
        if magic != MMAP_MAGIC:
            raise ValueError(f"{idx_path}: wrong magic {magic!r} (expected {MMAP_MAGIC!r}; "
                             "legacy TNTIDX files are read by LegacyIndexedDataset)")
        if version != 1:
            raise ValueError(f"{idx_path}: unsupported index version {version} (expected 1)")
        if code not in DTYPES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPES[code])
        expected = _HEADER.size + 12 * count + 8 * doc_count
        actual = os.path.getsize(idx_path)
        if actual < expected:
            raise ValueError(f"{idx_path}: index is {actual} bytes but its header needs "
                             f"{expected} ({count} sequences, {doc_count} doc_idx entries)")
        self._index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sizes = np.frombuffer(self._index, dtype=np.int32, count=count, offset=offset)
        offset += 4 * count
        self.pointers = np.frombuffer(self._index, dtype=np.int64, count=count, offset=offset)
        offset += 8 * count
        self.doc_idx = np.frombuffer(self._index, dtype=np.int64, count=doc_count, offset=offset)
        bin_path = data_file_path(prefix)
        bin_bytes = os.path.getsize(bin_path)
        if count and int(self.sizes.min()) < 0:
            raise ValueError(f"{idx_path}: negative sequence size {int(self.sizes.min())}; the "
                             "index is damaged, rebuild it with tools/preprocess_data.py")
        ends = self.pointers + self.sizes.astype(np.int64) * self.dtype.itemsize
        needed = int(ends.max()) if count else 0
        if bin_bytes < needed or (count and int(self.pointers.min()) < 0):
            raise ValueError(f"{bin_path}: data file is {bin_bytes} bytes but {idx_path} "
                             f"describes {needed}")
        self._bin = (np.memmap(bin_path, mode="r", dtype=np.uint8) if bin_bytes
                     else np.zeros(0, dtype=np.uint8))

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens `[offset, offset + length)` of sequence `idx` (to its end when length is None)."""
        size = int(self.sizes[idx])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"span [{offset}, {offset + length}) outside sequence {idx} of "
                             f"length {size} in {self.prefix}")
        start = int(self.pointers[idx]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, idx: int) -> np.ndarray:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sequence {idx} out of range for {len(self)} sequences")
        return self.get(idx % len(self))

    @property
    def supports_prefetch(self) -> bool:
        return False


class LegacyIndexedDataset:
    """Reader for the legacy `TNTIDX` format (1-D items only, as GPT data uses)."""

    def __init__(self, prefix: str) -> None:
        _require_files(prefix)
        self.prefix = prefix
        idx_path = index_file_path(prefix)
        with open(idx_path, "rb") as handle:
            magic = handle.read(8)
            if magic != LEGACY_MAGIC:
                raise ValueError(f"{idx_path}: wrong magic {magic!r} (expected {LEGACY_MAGIC!r})")
            version, code, _element_size, count, num_sizes, doc_count = struct.unpack(
                "<QQQQQQ", handle.read(48))
            if version != 1:
                raise ValueError(f"{idx_path}: unsupported index version {version}")
            if code not in DTYPES:
                raise ValueError(f"{idx_path}: unknown dtype code {code}")
            self.dtype = np.dtype(DTYPES[code])
            dim_offsets = np.fromfile(handle, dtype=np.int64, count=count + 1)
            self.data_offsets = np.fromfile(handle, dtype=np.int64, count=count + 1)
            all_sizes = np.fromfile(handle, dtype=np.int64, count=num_sizes)
            self.doc_idx = np.fromfile(handle, dtype=np.int64, count=doc_count)
        if len(self.doc_idx) != doc_count:
            raise ValueError(f"{idx_path}: index shorter than its header says")
        if not np.array_equal(np.diff(dim_offsets), np.ones(count, dtype=np.int64)):
            raise ValueError(f"{idx_path}: only 1-D items are supported")
        self.sizes = all_sizes[dim_offsets[:-1]].astype(np.int32)
        bin_path = data_file_path(prefix)
        if os.path.getsize(bin_path) < int(self.data_offsets[-1]) * self.dtype.itemsize:
            raise ValueError(f"{bin_path}: data file shorter than {idx_path} says")
        self._bin = np.memmap(bin_path, mode="r", dtype=self.dtype)

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        start = int(self.data_offsets[idx])
        size = int(self.data_offsets[idx + 1]) - start
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"span [{offset}, {offset + length}) outside sequence {idx}")
        return np.asarray(self._bin[start + offset:start + offset + length])

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.get(idx)


def make_dataset(prefix: str, impl: str = "infer") -> Union[MMapIndexedDataset,
                                                            LegacyIndexedDataset]:
    """Open `prefix` as `impl` ('mmap', 'lazy'/'cached' for the legacy format, or 'infer')."""
    _require_files(prefix)
    if impl == "infer":
        with open(index_file_path(prefix), "rb") as handle:
            magic = handle.read(9)
        impl = "mmap" if magic == MMAP_MAGIC else "cached" if magic[:8] == LEGACY_MAGIC else ""
        if not impl:
            raise ValueError(f"{index_file_path(prefix)}: unrecognised magic {magic!r}")
    if impl == "mmap":
        return MMapIndexedDataset(prefix)
    if impl in ("lazy", "cached"):
        return LegacyIndexedDataset(prefix)
    raise ValueError(f"unknown --data-impl {impl!r}; expected mmap, lazy, cached or infer")


class MMapIndexedDatasetBuilder:
    """Streams sequences to a `.bin` and writes the matching `.idx` on `finalize`."""

    def __init__(self, bin_path: str, *, dtype: type = np.int32) -> None:
        dtype_code(np.dtype(dtype))
        self.dtype = np.dtype(dtype)
        self.bin_path = bin_path
        self._file: BinaryIO = open(bin_path, "wb")
        self._sizes: List[int] = []
        self._doc_idx: List[int] = [0]

    def add_item(self, tokens: Union[np.ndarray, List[int]]) -> None:
        """Append one sequence."""
        array = np.asarray(tokens, dtype=self.dtype)
        self._file.write(array.tobytes(order="C"))
        self._sizes.append(int(array.size))

    def add_raw(self, data: bytes) -> None:
        """Append one sequence already encoded as this builder's dtype."""
        if len(data) % self.dtype.itemsize:
            raise ValueError("raw sequence length is not a multiple of the dtype size")
        self._file.write(data)
        self._sizes.append(len(data) // self.dtype.itemsize)

    def end_document(self) -> None:
        """Mark the sequences added since the last call as one document."""
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens: Union[np.ndarray, List[int]]) -> None:
        self.add_item(tokens)
        self.end_document()

    def merge_file_(self, prefix: str) -> None:
        """Append every sequence and document of the dataset at `prefix`."""
        other = MMapIndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"cannot merge {prefix}: dtype {other.dtype} differs from "
                             f"{self.dtype}")
        base = len(self._sizes)
        self._sizes.extend(int(s) for s in other.sizes)
        self._doc_idx.extend(base + int(d) for d in other.doc_idx[1:])
        with open(data_file_path(prefix), "rb") as source:
            shutil.copyfileobj(source, self._file, 16 * 1024 * 1024)

    def finalize(self, idx_path: str) -> None:
        """Close the `.bin` and write the index."""
        self._file.close()
        write_index(idx_path, np.asarray(self._sizes, dtype=np.int32),
                    np.asarray(self._doc_idx, dtype=np.int64), self.dtype)


def write_index(idx_path: str, sizes: np.ndarray, doc_idx: np.ndarray, dtype: np.dtype) -> None:
    """Write an mmap `.idx` for sequences of `sizes` tokens stored back to back."""
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    with open(idx_path, "wb") as handle:
        handle.write(_HEADER.pack(MMAP_MAGIC, 1, dtype_code(np.dtype(dtype)), len(sizes),
                                  len(doc_idx)))
        handle.write(sizes.tobytes(order="C"))
        handle.write(pointers.tobytes(order="C"))
        handle.write(np.asarray(doc_idx, dtype=np.int64).tobytes(order="C"))
