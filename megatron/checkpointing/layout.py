"""Where a checkpoint's files live, how the tracker files point at one, and what is complete.

Layout (docs/formats.md, sections 3B-3C): `<save>/global_stepN/` holds DeepSpeed's files
(`mp_rank_XX_model_states.pt`, ZeRO optimizer shards, pipeline layer files), plus this
project's `rng_state_rank_RRRRR.pt` (one per global rank) and `megatron_manifest.json`
(every file with its size, the model shape and the iteration). `<save>/latest` holds the tag
and `<save>/latest_checkpointed_iteration.txt` the iteration.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

LATEST_FILE = "latest"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
MANIFEST_FILE = "megatron_manifest.json"
STAGING_SUFFIX = ".saving"
REPLACED_SUFFIX = ".replaced"
_TAG_PATTERN = re.compile(r"^global_step(\d+)$")
_OPTIMIZER_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_LAYER_FILE = re.compile(r"^layer_\d+-model_\d+-model_states\.pt$")
# ZeRO-3 writes one model-states file per data-parallel rank, holding no weights.
_ZERO3_MODEL_FILE = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")


@dataclass(frozen=True)
class ParallelLayout:
    """How a run splits the model: what a checkpoint's files depend on."""

    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    data_parallel_size: int
    """0 when unknown (a checkpoint without ZeRO optimizer files)."""
    pipeline_engine: bool

    def __str__(self) -> str:
        data = f" x DP{self.data_parallel_size}" if self.data_parallel_size else ""
        engine = "pipeline engine" if self.pipeline_engine else "ZeRO engine"
        return (f"TP{self.tensor_model_parallel_size} x PP{self.pipeline_model_parallel_size}"
                f"{data} ({engine})")

    def differs_from(self, other: "ParallelLayout") -> bool:
        """Loading one into the other needs the tensors re-split (an unknown data-parallel
        size matches any)."""
        data_differs = (self.data_parallel_size and other.data_parallel_size
                        and self.data_parallel_size != other.data_parallel_size)
        return bool(data_differs) or (
            (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
             self.pipeline_engine)
            != (other.tensor_model_parallel_size, other.pipeline_model_parallel_size,
                other.pipeline_engine))


def optimizer_files(tag_dir: str) -> Dict[int, List[str]]:
    """Model-parallel rank -> its ZeRO optimizer files, in data-parallel rank order."""
    by_model_rank: Dict[int, Dict[int, str]] = defaultdict(dict)
    for name in os.listdir(tag_dir):
        match = _OPTIMIZER_FILE.match(name)
        if match:
            by_model_rank[int(match.group(2))][int(match.group(1))] = name
    return {rank: [files[d] for d in sorted(files)] for rank, files in by_model_rank.items()}


def saved_layout(tag_dir: str, *, tensor_model_parallel_size: int,
                 pipeline_model_parallel_size: int) -> ParallelLayout:
    """The layout of a checkpoint folder whose fingerprint records the TP and PP sizes: the
    engine from its files (per-layer files: pipeline engine), the data-parallel size from
    its ZeRO optimizer files."""
    names = os.listdir(tag_dir)
    files = optimizer_files(tag_dir)
    return ParallelLayout(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        data_parallel_size=len(files[min(files)]) if files else 0,
        pipeline_engine=any(_LAYER_FILE.match(name) for name in names))


def is_zero3_checkpoint(tag_dir: str) -> bool:
    """Whether ZeRO stage 3 wrote the folder: its weights exist only as partitions inside the
    `zero_pp_rank_*_optim_states.pt` files."""
    return any(_ZERO3_MODEL_FILE.match(name) for name in os.listdir(tag_dir))


def model_states_files(tag_dir: str) -> List[str]:
    """The model-states files of a ZeRO 0-2 folder (`mp_rank_XX_model_states.pt`), else
    ZeRO-3's per data-parallel rank ones; sorted paths."""
    return (sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
            or sorted(glob.glob(os.path.join(tag_dir, "zero_pp_rank_*_mp_rank_*_model_states.pt"))))


def tag_of_iteration(iteration: int) -> str:
    """The folder name upstream gives the checkpoint of `iteration`."""
    return f"global_step{iteration}"



def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a mix."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path) or ".")


def fsync_directory(path: str) -> None:
    """Make a rename or new file in `path` durable (best effort where directories cannot be opened)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def rng_file_name(rank: int) -> str:
    """The file holding global rank `rank`'s random states."""
    return f"rng_state_rank_{rank:05d}.pt"


def read_latest_tag(load_dir: str) -> Optional[str]:
    """The tag `<load_dir>/latest` names, or None without that file."""
    path = os.path.join(load_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return handle.read().strip()


def missing_files(tag_dir: str) -> List[str]:
    """Files the checkpoint needs but lacks (or that are shorter than recorded).

    With this project's manifest every file is checked; an upstream checkpoint without one
    only needs at least one `mp_rank_*_model_states.pt` (DeepSpeed names the rest on load).
    """
    if not os.path.isdir(tag_dir):
        return [tag_dir + "/"]
    manifest_path = os.path.join(tag_dir, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        if glob.glob(os.path.join(tag_dir, "*model_states.pt")):
            return []
        return [os.path.join(tag_dir, "mp_rank_00_model_states.pt")]
    try:
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return [manifest_path + " (unreadable)"]
    missing = []
    for name, size in manifest.get("files", {}).items():
        path = os.path.join(tag_dir, name)
        if not os.path.isfile(path):
            missing.append(path)
        elif os.path.getsize(path) != size:
            missing.append(f"{path} (size {os.path.getsize(path)}, expected {size})")
    return missing


def read_manifest(tag_dir: str) -> Optional[Dict[str, Any]]:
    """This project's manifest of a checkpoint folder, or None (e.g. an upstream checkpoint)."""
    path = os.path.join(tag_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def tags_newest_first(load_dir: str) -> List[str]:
    """The `global_stepN` folders of `load_dir`, largest N first."""
    tags = []
    for entry in os.listdir(load_dir) if os.path.isdir(load_dir) else []:
        match = _TAG_PATTERN.match(entry)
        if match and os.path.isdir(os.path.join(load_dir, entry)):
            tags.append((int(match.group(1)), entry))
    return [tag for _, tag in sorted(tags, reverse=True)]


def newest_complete_tag(load_dir: str) -> Optional[str]:
    """The `global_stepN` with the largest N that has every file it needs."""
    for tag in tags_newest_first(load_dir):
        if not missing_files(os.path.join(load_dir, tag)):
            return tag
    return None


def recover_interrupted_saves(save_dir: str) -> List[str]:
    """Clean up after saves that were killed (docs/formats.md, 3C): a staging folder
    `global_stepN.saving/` is deleted; a `global_stepN.replaced/` (an older save of the same
    step, moved aside) is moved back when the new folder never arrived, else deleted; an
    iteration tracker left behind `latest` is brought level with it. Returns one line per
    action."""
    done = []
    for entry in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, entry)
        if not os.path.isdir(path):
            continue
        if entry.endswith(STAGING_SUFFIX) and _TAG_PATTERN.match(entry[:-len(STAGING_SUFFIX)]):
            shutil.rmtree(path)
            done.append(f"removed {path}, left by a save that did not finish")
        elif entry.endswith(REPLACED_SUFFIX) and _TAG_PATTERN.match(entry[:-len(REPLACED_SUFFIX)]):
            final = path[:-len(REPLACED_SUFFIX)]
            if os.path.exists(final):
                shutil.rmtree(path)
                done.append(f"removed {path}, the older copy of a step saved again")
            else:
                os.rename(path, final)
                fsync_directory(save_dir)
                done.append(f"restored {final} from {path}: a save of that step did not finish")
    latest = read_latest_tag(save_dir)
    match = _TAG_PATTERN.match(latest or "")
    tracker = os.path.join(save_dir, TRACKER_FILE)
    if match and os.path.isdir(os.path.join(save_dir, latest)) and os.path.isfile(tracker):
        with open(tracker) as handle:
            recorded = handle.read().strip()
        if recorded != match.group(1):
            atomic_write_text(tracker, match.group(1))
            done.append(f"{tracker} said {recorded!r}; set to {match.group(1)}, the iteration "
                        f"of {LATEST_FILE} ({latest}): a save stopped between the two writes")
    return done
