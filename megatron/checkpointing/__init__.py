"""Checkpoints: upstream's on-disk layout, crash-safe saves, exact resume.

`layout` (folders, trackers, manifest), `fingerprint` (what must match the flags), `rng`
(per-rank random states), `hooks` (fault-injection points for tests), `safe_load` (loading
executes no code: weights-only unpickling with an allow-list), `zero3` (what ZeRO stage 3
changes in loading), `checkpointer` (save and load through the DeepSpeed engine).
"""
from megatron.checkpointing.checkpointer import (CHECKPOINT_VERSION, CheckpointError, Checkpointer,
                                                 LoadResult, commit_checkpoint,
                                                 resolve_load_tag)
from megatron.checkpointing.fingerprint import ModelFingerprint, fingerprint_from_upstream_args
from megatron.checkpointing.hooks import SaveHooks
from megatron.checkpointing.layout import (LATEST_FILE, MANIFEST_FILE, STAGING_SUFFIX, TRACKER_FILE,
                                           atomic_write_text, missing_files, newest_complete_tag,
                                           read_latest_tag, read_manifest, rng_file_name,
                                           tag_of_iteration)
from megatron.checkpointing.rng import capture_rng_states, restore_rng_states
from megatron.checkpointing.safe_load import allowed_globals, load_file, unsafe_content

__all__ = [
    "CHECKPOINT_VERSION", "CheckpointError", "Checkpointer", "LoadResult", "commit_checkpoint", "resolve_load_tag", "ModelFingerprint",
    "fingerprint_from_upstream_args", "SaveHooks", "LATEST_FILE", "MANIFEST_FILE",
    "STAGING_SUFFIX", "TRACKER_FILE", "atomic_write_text", "missing_files",
    "newest_complete_tag", "read_latest_tag", "read_manifest", "rng_file_name",
    "tag_of_iteration", "capture_rng_states", "restore_rng_states", "allowed_globals", "load_file",
    "unsafe_content",
]
