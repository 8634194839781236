"""DeepSpeed checkpoints in upstream's layout, saved crash-safe and resumed exactly.

Layout (formats.md 3.B): `<save>/global_stepN/` holds DeepSpeed's files (`mp_rank_XX_model_states.pt`,
ZeRO optimizer shards, pipeline layer files), plus this project's `rng_state_rank_RRRRR.pt`
(one per global rank: DeepSpeed writes client state only from data-parallel rank 0) and
`megatron_manifest.json` (every file with its size, the model shape and the iteration).
`<save>/latest` holds the tag and `<save>/latest_checkpointed_iteration.txt` the iteration.

Crash safety: every rank writes into `global_stepN.saving/`; only after all ranks finished
does rank 0 write the manifest, rename the folder to `global_stepN/` and then replace the two
tracker files atomically. A crash at any point leaves the previous checkpoint and the trackers
as they were.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

LATEST_FILE = "latest"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
MANIFEST_FILE = "megatron_manifest.json"
STAGING_SUFFIX = ".saving"
REPLACED_SUFFIX = ".replaced"
CHECKPOINT_VERSION = 3.0
_TAG_PATTERN = re.compile(r"^global_step(\d+)$")
# Test-only, "ITERATION:SECONDS": sleep in the middle of that iteration's save (after DeepSpeed
# wrote its files, before the commit), so a test can kill a rank there deterministically.
STALL_ENV = "MEGATRON_TEST_STALL_IN_SAVE"


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked; the message names the files or fields."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What must match between a checkpoint and the flags for the weights to fit."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    ffn_hidden_size: int
    padded_vocab_size: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int

    _FLAGS = {
        "num_layers": "--num-layers", "hidden_size": "--hidden-size",
        "num_attention_heads": "--num-attention-heads",
        "num_key_value_heads": "--num-key-value-heads", "ffn_hidden_size": "--ffn-hidden-size",
        "padded_vocab_size": "padded vocabulary size (tokenizer, --make-vocab-size-divisible-by)",
        "tensor_model_parallel_size": "--tensor-model-parallel-size",
        "pipeline_model_parallel_size": "--pipeline-model-parallel-size",
    }

    def mismatches(self, saved: Dict[str, Any]) -> List[str]:
        """'field: checkpoint X, flags Y' for every field the checkpoint records differently."""
        found = []
        for name, value in asdict(self).items():
            if name in saved and saved[name] is not None and saved[name] != value:
                found.append(f"{self._FLAGS[name]}: checkpoint {saved[name]}, flags {value}")
        return found


def fingerprint_from_upstream_args(args: Any) -> Dict[str, Any]:
    """The fingerprint fields an upstream checkpoint's `args` Namespace records."""
    names = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
             "padded_vocab_size", "tensor_model_parallel_size", "pipeline_model_parallel_size")
    values = {name: getattr(args, name, None) for name in names}
    kv_heads = getattr(args, "num_key_value_heads", None)
    values["num_key_value_heads"] = kv_heads
    return values


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a mix."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(os.path.dirname(path) or ".")


def _fsync_directory(path: str) -> None:
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
    return f"rng_state_rank_{rank:05d}.pt"


def read_latest_tag(load_dir: str) -> Optional[str]:
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
    path = os.path.join(tag_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def newest_complete_tag(load_dir: str) -> Optional[str]:
    """The `global_stepN` with the largest N that has every file it needs."""
    tags = []
    for entry in os.listdir(load_dir) if os.path.isdir(load_dir) else []:
        match = _TAG_PATTERN.match(entry)
        if match and os.path.isdir(os.path.join(load_dir, entry)):
            tags.append((int(match.group(1)), entry))
    for _, tag in sorted(tags, reverse=True):
        if not missing_files(os.path.join(load_dir, tag)):
            return tag
    return None


# ---------------------------------------------------------------------------------------------
# Random states


def capture_rng_states() -> Dict[str, Any]:
    """Every generator training draws from on this rank."""
    from deepspeed.accelerator import get_accelerator

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    accelerator = get_accelerator()
    states = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": get_cuda_rng_tracker().get_states(),
    }
    if accelerator.device_name() != "cpu":
        states["cuda_rng_state"] = accelerator.get_rng_state()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    from deepspeed.accelerator import get_accelerator

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    accelerator = get_accelerator()
    random.setstate(states["random_rng_state"])
    np.random.set_state(states["np_rng_state"])
    torch.set_rng_state(states["torch_rng_state"])
    if "cuda_rng_state" in states and accelerator.device_name() != "cpu":
        accelerator.set_rng_state(states["cuda_rng_state"])
    get_cuda_rng_tracker().set_states(states["rng_tracker_states"])


# ---------------------------------------------------------------------------------------------
# Save and load


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _print_rank_0(message: str) -> None:
    if _rank() == 0:
        print(message, flush=True)


@dataclass
class LoadResult:
    """What `Checkpointer.load` found; `rng_states` are applied later by `restore_rng`."""

    tag: Optional[str] = None
    iteration: int = 0
    rng_states: Optional[Dict[str, Any]] = None


class Checkpointer:
    """Saves and loads the run: DeepSpeed engine state plus this project's client state.

    engine: the `deepspeed` engine (ZeRO or pipeline). scheduler: the
    `OptimizerParamScheduler`. state: the `TrainState`. config: the `CheckpointConfig`.
    """

    def __init__(self, *, engine, scheduler, state, config, fingerprint: ModelFingerprint,
                 args: Optional[argparse.Namespace] = None) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.state = state
        self.config = config
        self.fingerprint = fingerprint
        self.args = args
        self.last_saved_iteration: Optional[int] = None
        self.loaded: LoadResult = LoadResult()

    # -- saving -----------------------------------------------------------------------------

    def _client_state(self) -> Dict[str, Any]:
        state = self.state
        client = {
            "checkpoint_version": CHECKPOINT_VERSION,
            "iteration": state.iteration,
            "tokens": state.consumed_train_tokens,
            "train_state": state.state_dict(),
            "opt_param_scheduler": self.scheduler.state_dict(),
            "model_fingerprint": asdict(self.fingerprint),
        }
        if self.args is not None:
            args = argparse.Namespace(**vars(self.args))
            # Upstream tools read these from args.
            args.consumed_train_samples = state.consumed_train_samples
            args.consumed_valid_samples = state.consumed_valid_samples
            args.padded_vocab_size = self.fingerprint.padded_vocab_size
            client["args"] = args
        return client

    def save(self, save_dir: str) -> bool:
        """Save the current iteration as `global_stepN`; False when it is already saved."""
        iteration = self.state.iteration
        tag = f"global_step{iteration}"
        if iteration == self.last_saved_iteration:
            return False
        if (
                self.loaded.iteration == iteration and self.loaded.tag == tag
                and os.path.abspath(self.config.load or "") == os.path.abspath(save_dir)):
            _print_rank_0(f"> checkpoint {tag} in {save_dir} is already up to date; not rewritten")
            return False
        start = time.monotonic()
        staging = tag + STAGING_SUFFIX
        staging_dir = os.path.join(save_dir, staging)
        if _rank() == 0:
            os.makedirs(save_dir, exist_ok=True)
            if os.path.exists(staging_dir):
                shutil.rmtree(staging_dir)  # left by a save that crashed
        _barrier()

        save_optim = not self.config.no_save_optim
        zero_flag = getattr(self.engine, "save_zero_checkpoint", None)
        if not save_optim and zero_flag is not None:
            self.engine.save_zero_checkpoint = False
        try:
            self.engine.save_checkpoint(save_dir, tag=staging, client_state=self._client_state(),
                                        save_latest=False)
        finally:
            if zero_flag is not None:
                self.engine.save_zero_checkpoint = zero_flag
        if not save_optim and _rank() == 0:
            self._strip_optimizer_from_model_states(staging_dir)

        self._test_stall(iteration, tag)

        if not self.config.no_save_rng:
            rng_path = os.path.join(staging_dir, rng_file_name(_rank()))
            torch.save(capture_rng_states(), rng_path + ".tmp")
            os.replace(rng_path + ".tmp", rng_path)
        _barrier()
        if _rank() == 0:
            self._commit(save_dir, tag, staging_dir, iteration)
        _barrier()
        self.last_saved_iteration = iteration
        _print_rank_0(f"> saved checkpoint {tag} (iteration {iteration}) to {save_dir} "
                      f"in {time.monotonic() - start:.1f} s")
        return True

    @staticmethod
    def _test_stall(iteration: int, tag: str) -> None:
        spec = os.environ.get(STALL_ENV)
        if not spec:
            return
        stall_iteration, seconds = spec.split(":")
        if int(stall_iteration) == iteration:
            print(f"[rank {_rank()}] test hook: stalling {seconds} s inside the save of {tag}",
                  flush=True)
            time.sleep(float(seconds))

    def _strip_optimizer_from_model_states(self, staging_dir: str) -> None:
        """--no-save-optim without ZeRO: DeepSpeed puts the optimizer into the model states."""
        for path in glob.glob(os.path.join(staging_dir, "mp_rank_*_model_states.pt")):
            content = torch.load(path, map_location="cpu", weights_only=False)
            if content.get("optimizer") is not None:
                content["optimizer"] = None
                torch.save(content, path + ".tmp")
                os.replace(path + ".tmp", path)

    def _commit(self, save_dir: str, tag: str, staging_dir: str, iteration: int) -> None:
        """Rank 0, after every rank wrote: manifest, rename into place, then the trackers."""
        files = {}
        for root, _, names in os.walk(staging_dir):
            for name in names:
                path = os.path.join(root, name)
                files[os.path.relpath(path, staging_dir)] = os.path.getsize(path)
        manifest = {"tag": tag, "iteration": iteration, "world_size": _world_size(),
                    "model": asdict(self.fingerprint), "files": files,
                    "has_optimizer_states": not self.config.no_save_optim,
                    "has_rng_states": not self.config.no_save_rng}
        atomic_write_text(os.path.join(staging_dir, MANIFEST_FILE), json.dumps(manifest, indent=1))
        final_dir = os.path.join(save_dir, tag)
        replaced_dir = final_dir + REPLACED_SUFFIX
        if os.path.exists(final_dir):
            # Another run saved this iteration before: keep it until the new one is in place.
            if os.path.exists(replaced_dir):
                shutil.rmtree(replaced_dir)
            os.rename(final_dir, replaced_dir)
        os.rename(staging_dir, final_dir)
        _fsync_directory(save_dir)
        atomic_write_text(os.path.join(save_dir, LATEST_FILE), tag)
        atomic_write_text(os.path.join(save_dir, TRACKER_FILE), str(iteration))
        if os.path.exists(replaced_dir):
            shutil.rmtree(replaced_dir)

    # -- loading ----------------------------------------------------------------------------

    def _resolve_tag(self, load_dir: str) -> Optional[str]:
        if self.config.load_tag is not None:
            return self.config.load_tag
        tag = read_latest_tag(load_dir)
        if tag is None:
            tracker = os.path.join(load_dir, TRACKER_FILE)
            if os.path.isfile(tracker):
                with open(tracker) as handle:
                    iteration = handle.read().strip()
                if iteration.isdigit():
                    return f"global_step{int(iteration)}"
        return tag

    def _check_complete(self, load_dir: str, tag: str) -> None:
        tag_dir = os.path.join(load_dir, tag)
        missing = missing_files(tag_dir)
        if not missing:
            return
        newest = newest_complete_tag(load_dir)
        hint = (f"the newest complete checkpoint there is {newest} (pass --load-tag {newest})"
                if newest else "there is no complete checkpoint in that directory")
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        source = "--load-tag" if self.config.load_tag is not None else f"{load_dir}/{LATEST_FILE}"
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} (from {source}) is missing or "
                              f"incomplete: missing {shown}; {hint}")

    def _check_fingerprint(self, load_dir: str, tag: str) -> None:
        tag_dir = os.path.join(load_dir, tag)
        manifest = read_manifest(tag_dir)
        if manifest is not None:
            saved = manifest.get("model", {})
        else:
            candidates = sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
            content = torch.load(candidates[0], map_location="cpu", weights_only=False, mmap=True)
            if "model_fingerprint" in content:
                saved = content["model_fingerprint"]
            elif content.get("args") is not None:
                saved = fingerprint_from_upstream_args(content["args"])
            else:
                saved = {}
        problems = self.fingerprint.mismatches(saved)
        if problems:
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} does not match the flags: "
                                  + "; ".join(problems))

    def load(self) -> LoadResult:
        """Load `--load` (the `latest` tag, or `--load-tag`) into the engine and the run state.

        Nothing to load (no --load, or no tracker file in it) starts from scratch, as upstream.
        RNG states are returned, not applied: call `restore_rng` once the data iterators exist.
        """
        config = self.config
        load_dir = config.load
        if load_dir is None:
            return self.loaded
        tag = self._resolve_tag(load_dir)
        if tag is None:
            if config.exit_on_missing_checkpoint:
                raise CheckpointError(f"--load {load_dir}: no checkpoint found (no {LATEST_FILE} or "
                                      f"{TRACKER_FILE} file) and --exit-on-missing-checkpoint is set")
            _print_rank_0(f"> no checkpoint found in --load {load_dir} (no {LATEST_FILE} file); "
                          "starting from scratch")
            return self.loaded
        self._check_complete(load_dir, tag)
        self._check_fingerprint(load_dir, tag)

        finetune = config.finetune
        load_optimizer = not (config.no_load_optim or finetune)
        manifest = read_manifest(os.path.join(load_dir, tag)) or {}
        if load_optimizer and manifest.get("has_optimizer_states") is False:
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} was saved with "
                                  "--no-save-optim; pass --no-load-optim or --finetune")
        path, client = self.engine.load_checkpoint(
            load_dir, tag=tag, load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=False, load_module_only=finetune)
        if path is None:
            raise CheckpointError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")
        client = client or {}
        result = LoadResult(tag=tag)
        if finetune:
            _print_rank_0(f"> loaded the weights of {tag} from {load_dir} (--finetune: iteration, "
                          "optimizer, scheduler and RNG start afresh)")
            self.loaded = result
            return result

        if "train_state" in client:
            self.state.load_state_dict(client["train_state"])
        else:  # an upstream checkpoint
            args = client.get("args")
            self.state.iteration = int(client.get("iteration", 0))
            self.state.consumed_train_samples = int(getattr(args, "consumed_train_samples", 0))
            self.state.consumed_valid_samples = int(getattr(args, "consumed_valid_samples", 0))
            self.state.consumed_train_tokens = int(client.get("tokens", 0))
        scheduler_state = client.get("opt_param_scheduler", client.get("lr_scheduler"))
        if scheduler_state is not None:
            self.scheduler.load_state_dict(scheduler_state)
        result.iteration = self.state.iteration

        if not config.no_load_rng:
            rng_path = os.path.join(load_dir, tag, rng_file_name(_rank()))
            saved_world = manifest.get("world_size")
            if os.path.isfile(rng_path) and saved_world in (None, _world_size()):
                result.rng_states = torch.load(rng_path, map_location="cpu", weights_only=False)
            else:
                _print_rank_0(f"> warning: checkpoint {tag} has no random states for this layout "
                              f"(saved with world size {saved_world}, --no-save-rng, or upstream); "
                              "random states start from --seed")
        _print_rank_0(f"> loaded checkpoint {tag} from {load_dir} at iteration "
                      f"{self.state.iteration} (consumed samples "
                      f"{self.state.consumed_train_samples}"
                      f"{', optimizer state not loaded' if not load_optimizer else ''})")
        self.loaded = result
        return result

    def restore_rng(self) -> None:
        """Apply the loaded RNG states (after every other RNG consumer was built)."""
        if self.loaded.rng_states is not None:
            restore_rng_states(self.loaded.rng_states)
