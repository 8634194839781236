"""Hugging Face model folders: reading their weights without running code, and writing
`model.safetensors` (sharded with an index above a size limit) one tensor at a time.

Reading: safetensors files are memory-mapped and read tensor by tensor. `pytorch_model.bin`
files are pickles; they are read only when the caller allows it, and then only through this
project's weights-only loader with its allow-list (`megatron.checkpointing.load_file`), so a
file naming any other function is refused, never executed.

Writing: the file layout (an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then the raw bytes) is planned from the tensor shapes
before any weight is read, so each tensor is written at its offset as it arrives and memory
holds one tensor at a time, in whatever order the tensors come.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron.checkpointing import load_file

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.float64: "F64"}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (for --max-shard-size)."""
    units = {"KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "KB": 10 ** 3, "MB": 10 ** 6,
             "GB": 10 ** 9, "B": 1}
    value = text.strip().upper()
    for unit, factor in units.items():
        if value.endswith(unit):
            number = value[:-len(unit)].strip()
            try:
                return int(float(number) * factor)
            except ValueError:
                break
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or "
                         "a byte count") from None


class SafetensorsWriter:
    """Writes planned tensors into `folder` as `model.safetensors`, or as
    `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` when they exceed
    `max_shard_bytes` (a tensor larger than the limit gets a shard of its own)."""

    def __init__(self, folder: str, plan: Sequence[Tuple[str, Tuple[int, ...]]],
                 dtype: torch.dtype, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"cannot write {dtype} tensors to safetensors here")
        self.folder, self.dtype = folder, dtype
        element = torch.tensor([], dtype=dtype).element_size()
        shards: List[List[Tuple[str, Tuple[int, ...], int]]] = [[]]
        used = 0
        for name, shape in plan:
            size = element * _numel(shape)
            if shards[-1] and used + size > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append((name, tuple(shape), size))
            used += size
        count = len(shards)
        self.files = ([SAFETENSORS_FILE] if count == 1 else
                      [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        self._where: Dict[str, Tuple[str, int, Tuple[int, ...]]] = {}
        self.total_bytes = 0
        for file_name, entries in zip(self.files, shards):
            self._start_file(file_name, entries)
        self._written: set = set()

    def _start_file(self, file_name: str, entries) -> None:
        header: Dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, size in entries:
            header[name] = {"dtype": _DTYPES[self.dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        start = 8 + len(text)
        path = os.path.join(self.folder, file_name)
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(text)))
            handle.write(text)
            handle.truncate(start + offset)
        for name, shape, _ in entries:
            begin = header[name]["data_offsets"][0]  # type: ignore[index]
            self._where[name] = (path, start + begin, shape)
        self.total_bytes += offset

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (cast to the writer's dtype) at its place."""
        if name not in self._where:
            raise ValueError(f"tensor {name} is not part of the planned model")
        if name in self._written:
            raise ValueError(f"tensor {name} was produced twice")
        path, offset, shape = self._where[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
        data = tensor.detach().to(self.dtype).contiguous().reshape(-1).view(torch.uint8)
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(data.numpy().data)
        self._written.add(name)

    def finish(self) -> List[str]:
        """Check every planned tensor was written and write the index when sharded; returns
        the files written."""
        missing = [name for name in self._where if name not in self._written]
        if missing:
            raise ValueError(f"the checkpoint produced no {', '.join(missing[:3])}"
                             + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        if len(self.files) == 1:
            return list(self.files)
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {name: os.path.basename(path)
                                for name, (path, _, _) in sorted(self._where.items())}}
        write_json(os.path.join(self.folder, SAFETENSORS_INDEX), index)
        return list(self.files) + [SAFETENSORS_INDEX]


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def write_json(path: str, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None


def _weight_map(path: str) -> Dict[str, str]:
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: no weight_map")
    for file_name in weight_map.values():
        if os.path.basename(file_name) != file_name or file_name.startswith("."):
            raise ValueError(f"{path}: weight file {file_name!r} is not a plain file name")
    return weight_map


class HFWeights:
    """The weights of a transformers model folder, read one tensor at a time."""

    def __init__(self, folder: str, *, allow_bin: bool = False) -> None:
        self.folder = folder
        self._file_of: Dict[str, str] = {}
        self._open: Dict[str, object] = {}
        self._bin_cache: Tuple[Optional[str], Optional[dict]] = (None, None)
        index, self.is_bin = self._index(allow_bin)
        files = sorted(set(index.values())) if isinstance(index, dict) else [index]
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise ValueError(f"--hf {folder}: missing weight file(s) {', '.join(missing)} "
                             "(named by the index)")
        if isinstance(index, dict):
            self._file_of = dict(index)
        else:
            self._file_of = {name: index for name in self._keys_of(index)}

    def _index(self, allow_bin: bool):
        """(the index's weight map, or the one weight file; whether it is a pickle)."""
        folder = self.folder
        if os.path.isfile(os.path.join(folder, SAFETENSORS_INDEX)):
            return _weight_map(os.path.join(folder, SAFETENSORS_INDEX)), False
        if os.path.isfile(os.path.join(folder, SAFETENSORS_FILE)):
            return SAFETENSORS_FILE, False
        has_bin = any(os.path.isfile(os.path.join(folder, f)) for f in (BIN_INDEX, BIN_FILE))
        if has_bin and not allow_bin:
            raise ValueError(f"--hf {folder}: only pickled pytorch_model.bin weights; pass "
                             "--allow-bin to read them weights-only with the checkpoint "
                             "allow-list (or convert them to safetensors)")
        if os.path.isfile(os.path.join(folder, BIN_INDEX)):
            return _weight_map(os.path.join(folder, BIN_INDEX)), True
        if os.path.isfile(os.path.join(folder, BIN_FILE)):
            return BIN_FILE, True
        raise ValueError(f"--hf {folder}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or "
                         f"{BIN_FILE} found")

    def _keys_of(self, file_name: str) -> List[str]:
        if self.is_bin:
            return list(self._load_bin(file_name))
        return list(self._safe(file_name).keys())

    def _safe(self, file_name: str):
        from safetensors import safe_open

        if file_name not in self._open:
            try:
                self._open[file_name] = safe_open(os.path.join(self.folder, file_name),
                                                  framework="pt")
            except Exception as error:  # safetensors raises its own error types
                raise ValueError(f"--hf {self.folder}: {file_name} is not a readable "
                                 f"safetensors file ({error})") from None
        return self._open[file_name]

    def _load_bin(self, file_name: str) -> dict:
        cached_name, cached = self._bin_cache
        if cached_name != file_name:
            content = load_file(os.path.join(self.folder, file_name))
            if not isinstance(content, dict):
                raise ValueError(f"--hf {self.folder}: {file_name} holds no state dict")
            self._bin_cache = (file_name, content)
            cached = content
        return cached  # type: ignore[return-value]

    def names(self) -> List[str]:
        return list(self._file_of)

    def shape(self, name: str) -> Tuple[int, ...]:
        file_name = self._file_of[name]
        if self.is_bin:
            return tuple(self._load_bin(file_name)[name].shape)
        return tuple(self._safe(file_name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file_of:
            raise ValueError(f"--hf {self.folder}: tensor {name} is missing")
        file_name = self._file_of[name]
        if self.is_bin:
            return self._load_bin(file_name)[name]
        return self._safe(file_name).get_tensor(name)
