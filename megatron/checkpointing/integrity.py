"""Checksums of a checkpoint's files: recorded in the manifest at save, verified at load.

CRC-32C (the `crc32c` package: hardware instructions, about 11 GB/s on one core of the CPU
machines, against 2 GB/s for zlib's CRC-32) catches bit rot and truncated or partial copies;
it is not a defence against deliberate tampering (loading executes no code
whatever the files hold, see `megatron.checkpointing.safe_load`). The ranks share the work
(`shared_work`).
"""
from __future__ import annotations

import os
import zlib
from typing import Callable, Dict, List, Sequence

import crc32c

from megatron.checkpointing.shared_work import gather_to_all_ranks, rank_share

_CHUNK_BYTES = 16 * 1024 * 1024
# Algorithm name -> running-checksum function; a record names its algorithm, so one written
# with another stays verifiable.
_ALGORITHMS: Dict[str, Callable[[bytes, int], int]] = {
    "crc32c": crc32c.crc32c, "crc32": zlib.crc32}
DEFAULT_ALGORITHM = "crc32c"


def file_checksum(path: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """'<algorithm>:xxxxxxxx' of the file's bytes (crc32c by default, or crc32)."""
    update = _ALGORITHMS[algorithm]
    value = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            value = update(chunk, value)
    return f"{algorithm}:{value:08x}"


def shared_checksums(root: str, names: Sequence[str]) -> Dict[str, str]:
    """Checksums of `names` (paths relative to `root`), computed by all ranks together.

    Collective: every rank must call it with the same sorted `names`."""
    mine = [(name, file_checksum(os.path.join(root, name))) for name in rank_share(names)]
    return dict(gather_to_all_ranks(mine))


def damaged_files(root: str, checksums: Dict[str, str]) -> List[str]:
    """'path (why)' for every recorded file that is missing or whose bytes changed, found by
    all ranks together. Collective: every rank must call it with the same `checksums`."""
    problems = []
    for name in rank_share(sorted(checksums)):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            problems.append(f"{path} (missing)")
            continue
        algorithm = checksums[name].partition(":")[0]
        actual = (file_checksum(path, algorithm) if algorithm in _ALGORITHMS
                  else f"unknown algorithm {algorithm!r}")
        if actual != checksums[name]:
            problems.append(f"{path} (checksum {actual}, recorded {checksums[name]})")
    return sorted(gather_to_all_ranks(problems))
