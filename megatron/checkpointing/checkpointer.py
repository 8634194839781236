"""Saving and loading a run: DeepSpeed's engine state plus this project's client state.

Crash safety: every rank writes into `global_stepN.saving/`; only after all ranks finished
does rank 0 write the manifest, rename the folder to `global_stepN/` and then replace the two
tracker files atomically. A crash at any point leaves the previous checkpoint and the trackers
as they were.

Loading executes no code: the tag must name a folder inside `--load`, every file is checked
by all ranks together before any is read, and every read unpickles weights only
(`safe_load`).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megatron.checkpointing.errors import CheckpointError
from megatron.checkpointing.fingerprint import (LAYOUT_FIELDS, ModelFingerprint,
                                                fingerprint_from_upstream_args)
from megatron.checkpointing.hooks import SaveHooks
from megatron.checkpointing.integrity import damaged_files, shared_checksums
from megatron.checkpointing.layout import (LATEST_FILE, MANIFEST_FILE, REPLACED_SUFFIX,
                                           STAGING_SUFFIX, TRACKER_FILE, ParallelLayout,
                                           atomic_write_text, fsync_directory,
                                           missing_files, model_states_files,
                                           read_latest_tag, read_manifest,
                                           recover_interrupted_saves, rng_file_name,
                                           saved_layout, tag_of_iteration, tags_newest_first)
from megatron.checkpointing.rng import capture_rng_states, restore_rng_states
from megatron.checkpointing.zero3 import check_zero3_compatible, load_zero3_weights_only
from megatron.checkpointing.safe_load import (check_tag, deepspeed_loads_weights_only, load_file,
                                              plain_args, refuse_unsafe_files)
from megatron.core.utils import print_rank_0

CHECKPOINT_VERSION = 3.0


def resolve_load_tag(load_dir: str, load_tag: Optional[str]) -> Optional[str]:
    """The tag to load: `load_tag` (--load-tag), else `latest`, else `global_stepN` from the
    iteration tracker; checked to name a folder inside `load_dir`. None: nothing to load."""
    if load_tag is not None:
        check_tag(load_dir, load_tag, source="--load-tag", from_file=False)
        return load_tag
    tag = read_latest_tag(load_dir)
    source = f"{load_dir}/{LATEST_FILE}"
    if tag is None:
        tracker = os.path.join(load_dir, TRACKER_FILE)
        if not os.path.isfile(tracker):
            return None
        with open(tracker) as handle:
            iteration = handle.read().strip()
        if not iteration.isdigit():
            return None
        tag, source = tag_of_iteration(int(iteration)), f"{load_dir}/{TRACKER_FILE}"
    check_tag(load_dir, tag, source=source, from_file=True)
    return tag


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _broadcast_from_rank_0(value: Any) -> Any:
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _ranks_where(condition: bool) -> List[int]:
    """The ranks on which `condition` holds, on every rank (collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [0] if condition else []
    from deepspeed.accelerator import get_accelerator

    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32,
                        device=get_accelerator().current_device_name())
    flags[dist.get_rank()] = int(condition)
    dist.all_reduce(flags)
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _relative_files(folder: str) -> List[str]:
    """Every file below `folder`, as sorted paths relative to it."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


@dataclass
class LoadResult:
    """What `Checkpointer.load` found; `rng_states` are applied later by `restore_rng`."""

    tag: Optional[str] = None
    iteration: int = 0
    rng_states: Optional[Dict[str, Any]] = None


def commit_checkpoint(save_dir: str, tag: str, staging_dir: str, *, iteration: int,
                      checksums: Dict[str, str], world_size: int,
                      fingerprint: ModelFingerprint, has_optimizer_states: bool,
                      has_rng_states: bool, save_hooks: Optional[SaveHooks] = None) -> None:
    """Make the complete folder `staging_dir` the checkpoint `save_dir/tag`: write its
    manifest, rename it into place (an older folder of that tag is kept aside until then),
    then replace `latest` and the iteration tracker. One process calls it, after every file
    of the folder is written; a crash at any point leaves the previous checkpoint usable."""
    hooks = save_hooks or SaveHooks()
    files = {name: os.path.getsize(os.path.join(staging_dir, name))
             for name in _relative_files(staging_dir)}
    manifest = {"tag": tag, "iteration": iteration, "world_size": world_size,
                "model": asdict(fingerprint), "files": files, "checksums": checksums,
                "has_optimizer_states": has_optimizer_states, "has_rng_states": has_rng_states}
    hooks.before_commit(iteration=iteration, tag=tag, staging_dir=staging_dir)
    atomic_write_text(os.path.join(staging_dir, MANIFEST_FILE), json.dumps(manifest, indent=1))
    final_dir = os.path.join(save_dir, tag)
    replaced_dir = final_dir + REPLACED_SUFFIX
    if os.path.exists(final_dir):
        # Another run saved this iteration before: keep it until the new one is in place.
        if os.path.exists(replaced_dir):
            shutil.rmtree(replaced_dir)
        os.rename(final_dir, replaced_dir)
    os.rename(staging_dir, final_dir)
    fsync_directory(save_dir)
    hooks.after_rename(iteration=iteration, tag=tag, final_dir=final_dir)
    atomic_write_text(os.path.join(save_dir, LATEST_FILE), tag)
    hooks.between_trackers(iteration=iteration, tag=tag)
    atomic_write_text(os.path.join(save_dir, TRACKER_FILE), str(iteration))
    if os.path.exists(replaced_dir):
        shutil.rmtree(replaced_dir)


class Checkpointer:
    """Saves and loads the run: DeepSpeed engine state plus this project's client state.

    engine: the `deepspeed` engine (ZeRO or pipeline). scheduler: the
    `OptimizerParamScheduler`. state: the `TrainState`. config: the `CheckpointConfig`.
    save_hooks: fault-injection points for tests (`SaveHooks`, no-ops by default).
    layout: this run's `ParallelLayout`; with `load_other_layout`, a checkpoint of the same
    model saved on another layout is loaded by calling
    `load_other_layout(load_dir, tag, load_optimizer=...)`, which puts the weights (and the
    optimizer state) into the engine and returns the checkpoint's client state.
    """

    def __init__(self, *, engine, scheduler, state, config, fingerprint: ModelFingerprint,
                 args: Optional[argparse.Namespace] = None,
                 save_hooks: Optional[SaveHooks] = None,
                 layout: Optional[ParallelLayout] = None,
                 load_other_layout: Optional[Callable[..., Dict[str, Any]]] = None) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.state = state
        self.config = config
        self.fingerprint = fingerprint
        self.args = args
        self.save_hooks = save_hooks or SaveHooks()
        self.layout = layout
        self.load_other_layout = load_other_layout
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
            args = plain_args(self.args)
            # Upstream tools read these from args.
            args.consumed_train_samples = state.consumed_train_samples
            args.consumed_valid_samples = state.consumed_valid_samples
            args.padded_vocab_size = self.fingerprint.padded_vocab_size
            client["args"] = args
        return client

    def save(self, save_dir: str) -> bool:
        """Save the current iteration as `global_stepN`; False when it is already saved."""
        iteration = self.state.iteration
        tag = tag_of_iteration(iteration)
        if iteration == self.last_saved_iteration:
            return False
        if (
                self.loaded.iteration == iteration and self.loaded.tag == tag
                and os.path.abspath(self.config.load or "") == os.path.abspath(save_dir)):
            print_rank_0(f"> checkpoint {tag} in {save_dir} is already up to date; not rewritten")
            return False
        start = time.monotonic()
        staging = tag + STAGING_SUFFIX
        staging_dir = os.path.join(save_dir, staging)
        if _rank() == 0:
            os.makedirs(save_dir, exist_ok=True)
            if os.path.exists(staging_dir):
                shutil.rmtree(staging_dir)  # left by a save that crashed
        _barrier()

        self.save_hooks.before_engine_files(iteration=iteration, tag=tag, staging_dir=staging_dir)
        failure = self._write_files(save_dir, staging, staging_dir, iteration=iteration, tag=tag)
        failed_ranks = _ranks_where(failure is not None)
        if failed_ranks:
            if _rank() == 0:
                shutil.rmtree(staging_dir, ignore_errors=True)
            reason = f": {failure}" if failure is not None else ""
            raise CheckpointError(f"--save {save_dir}: writing checkpoint {tag} failed on rank"
                                  f"{'s' if len(failed_ranks) > 1 else ''} "
                                  f"{', '.join(map(str, failed_ranks))}{reason}; the previous "
                                  f"checkpoint and the tracker files are untouched")
        checksum_start = time.monotonic()
        checksums = shared_checksums(staging_dir, _broadcast_from_rank_0(
            _relative_files(staging_dir) if _rank() == 0 else None))
        checksum_seconds = time.monotonic() - checksum_start
        if _rank() == 0:
            self._commit(save_dir, tag, staging_dir, iteration, checksums)
        _barrier()
        self.last_saved_iteration = iteration
        print_rank_0(f"> saved checkpoint {tag} (iteration {iteration}) to {save_dir} "
                     f"in {time.monotonic() - start:.2f} s (checksums {checksum_seconds:.2f} s)")
        return True

    def _write_files(self, save_dir: str, staging: str, staging_dir: str, *, iteration: int,
                     tag: str) -> Optional[BaseException]:
        """This rank's files into the staging folder: DeepSpeed's, then the random states.
        A write error (a full disk, a quota) is returned, not raised, so that every rank
        still reaches the collectives the others wait in and all can stop together."""
        save_optim = not self.config.no_save_optim
        zero_flag = getattr(self.engine, "save_zero_checkpoint", None)
        if not save_optim and zero_flag is not None:
            self.engine.save_zero_checkpoint = False
        try:
            self.engine.save_checkpoint(save_dir, tag=staging, client_state=self._client_state(),
                                        save_latest=False)
        except (OSError, RuntimeError) as error:
            _barrier()  # the other ranks wait in the barrier that ends DeepSpeed's save
            return error
        finally:
            if zero_flag is not None:
                self.engine.save_zero_checkpoint = zero_flag
        try:
            if not save_optim and _rank() == 0:
                self._strip_optimizer_from_model_states(staging_dir)
            self.save_hooks.after_engine_files(iteration=iteration, tag=tag,
                                               staging_dir=staging_dir)
            if not self.config.no_save_rng:
                rng_path = os.path.join(staging_dir, rng_file_name(_rank()))
                torch.save(capture_rng_states(), rng_path + ".tmp")
                os.replace(rng_path + ".tmp", rng_path)
        except (OSError, RuntimeError) as error:
            return error
        return None

    def _strip_optimizer_from_model_states(self, staging_dir: str) -> None:
        """--no-save-optim without ZeRO: DeepSpeed puts the optimizer into the model states."""
        for path in glob.glob(os.path.join(staging_dir, "mp_rank_*_model_states.pt")):
            content = load_file(path)
            if content.get("optimizer") is not None:
                content["optimizer"] = None
                torch.save(content, path + ".tmp")
                os.replace(path + ".tmp", path)

    def _commit(self, save_dir: str, tag: str, staging_dir: str, iteration: int,
                checksums: Dict[str, str]) -> None:
        """Rank 0, after every rank wrote: manifest, rename into place, then the trackers."""
        commit_checkpoint(save_dir, tag, staging_dir, iteration=iteration, checksums=checksums,
                          world_size=_world_size(), fingerprint=self.fingerprint,
                          has_optimizer_states=not self.config.no_save_optim,
                          has_rng_states=not self.config.no_save_rng,
                          save_hooks=self.save_hooks)

    def recover_interrupted_saves(self) -> None:
        """At start-up, before loading: undo what a save killed midway left in `--save`
        (rank 0 works, every rank waits)."""
        save_dir = self.config.save
        if save_dir and _rank() == 0 and os.path.isdir(save_dir):
            for line in recover_interrupted_saves(save_dir):
                print_rank_0(f"> {line}")
        _barrier()

    # -- loading ----------------------------------------------------------------------------

    def _resolve_tag(self, load_dir: str) -> Optional[str]:
        return resolve_load_tag(load_dir, self.config.load_tag)

    def _check_complete(self, load_dir: str, tag: str) -> None:
        tag_dir = os.path.join(load_dir, tag)
        missing = missing_files(tag_dir)
        if not missing:
            return
        newest = self._newest_intact_tag(load_dir)
        hint = (f"the newest intact checkpoint there is {newest} (pass --load-tag {newest})"
                if newest else "there is no intact checkpoint in that directory")
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        source = "--load-tag" if self.config.load_tag is not None else f"{load_dir}/{LATEST_FILE}"
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} (from {source}) is missing or "
                              f"incomplete: missing {shown}; {hint}")

    def _newest_intact_tag(self, load_dir: str) -> Optional[str]:
        """The newest step with all its files, whose checksums match when verification is on
        (collective: every rank walks the same steps)."""
        for tag in tags_newest_first(load_dir):
            tag_dir = os.path.join(load_dir, tag)
            if missing_files(tag_dir):
                continue
            checksums = (read_manifest(tag_dir) or {}).get("checksums")
            if self.config.verify_checkpoint and checksums and damaged_files(tag_dir, checksums):
                continue
            return tag
        return None

    def _verify_checksums(self, load_dir: str, tag: str) -> Optional[float]:
        """Seconds spent checking the step's files against the manifest (ranks share the
        files), or None when it records no checksums (upstream's, or older ones)."""
        start = time.monotonic()
        tag_dir = os.path.join(load_dir, tag)
        checksums = (read_manifest(tag_dir) or {}).get("checksums")
        if not checksums:
            return None
        damaged = damaged_files(tag_dir, checksums)
        if damaged:
            newest = self._newest_intact_tag(load_dir)
            hint = (f"the newest intact checkpoint there is {newest} (pass --load-tag {newest})"
                    if newest and newest != tag else "there is no other intact checkpoint there")
            shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more"
                                              if len(damaged) > 3 else "")
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} is damaged: {shown}; "
                                  f"{hint}")
        return time.monotonic() - start

    def _saved_fingerprint(self, tag_dir: str) -> Dict[str, Any]:
        manifest = read_manifest(tag_dir)
        if manifest is not None:
            return manifest.get("model", {})
        candidates = model_states_files(tag_dir)
        if not candidates:
            return {}
        content = load_file(candidates[0], mmap=True)
        if "model_fingerprint" in content:
            return content["model_fingerprint"]
        if content.get("args") is not None:
            return fingerprint_from_upstream_args(content["args"])
        return {}

    def _check_fingerprint(self, load_dir: str, tag: str) -> Optional[ParallelLayout]:
        """Refuse a checkpoint of another model. A checkpoint of this model saved on another
        layout is refused too, unless this run can re-split it: then its layout is returned
        (None: the same layout, DeepSpeed loads it)."""
        tag_dir = os.path.join(load_dir, tag)
        saved = self._saved_fingerprint(tag_dir)
        can_resplit = self.layout is not None and self.load_other_layout is not None
        # The padded vocabulary depends on TP: the re-splitting loader checks the tokenizer.
        ignore = (*LAYOUT_FIELDS, "padded_vocab_size") if can_resplit else ()
        problems = self.fingerprint.mismatches(saved, ignore=ignore)
        if problems:
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} does not match the flags: "
                                  + "; ".join(problems))
        if not can_resplit:
            return None
        old = saved_layout(
            tag_dir,
            tensor_model_parallel_size=saved.get("tensor_model_parallel_size")
            or self.layout.tensor_model_parallel_size,
            pipeline_model_parallel_size=saved.get("pipeline_model_parallel_size")
            or self.layout.pipeline_model_parallel_size)
        if saved.get("padded_vocab_size") not in (None, self.fingerprint.padded_vocab_size):
            return old  # the same layout cannot hold another padded vocabulary
        return old if old.differs_from(self.layout) else None

    def _zero_stage(self) -> int:
        stage = getattr(self.engine, "zero_optimization_stage", None)
        return int(stage()) if callable(stage) else 0

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
            print_rank_0(f"> no checkpoint found in --load {load_dir} (no {LATEST_FILE} file); "
                          "starting from scratch")
            return self.loaded
        start = time.monotonic()
        self._check_complete(load_dir, tag)
        verified = self._verify_checksums(load_dir, tag) if config.verify_checkpoint else None
        refuse_unsafe_files(load_dir, os.path.join(load_dir, tag))
        other_layout = self._check_fingerprint(load_dir, tag)
        check_zero3_compatible(load_dir, tag, zero_stage=self._zero_stage(),
                               other_layout=other_layout, layout=self.layout)

        finetune = config.finetune
        load_optimizer = not (config.no_load_optim or finetune)
        manifest = read_manifest(os.path.join(load_dir, tag)) or {}
        if load_optimizer and manifest.get("has_optimizer_states") is False:
            raise CheckpointError(f"--load {load_dir}: checkpoint {tag} was saved with "
                                  "--no-save-optim; pass --no-load-optim or --finetune")
        if other_layout is not None:
            print_rank_0(f"> checkpoint {tag} was saved on {other_layout}; resuming on "
                         f"{self.layout}: re-splitting its weights"
                         f"{' and optimizer state' if load_optimizer else ''}")
            client = self.load_other_layout(load_dir, tag, load_optimizer=load_optimizer)
        else:
            if not load_optimizer and self._zero_stage() == 3:
                path, client = load_zero3_weights_only(self.engine, load_dir, tag,
                                                       finetune=finetune)
            else:
                with deepspeed_loads_weights_only(self.engine):
                    path, client = self.engine.load_checkpoint(
                        load_dir, tag=tag, load_optimizer_states=load_optimizer,
                        load_lr_scheduler_states=False, load_module_only=finetune)
            if path is None:
                raise CheckpointError(f"--load {load_dir}: DeepSpeed could not load checkpoint "
                                      f"{tag}")
        client = client or {}
        result = LoadResult(tag=tag)
        if finetune:
            print_rank_0(f"> loaded the weights of {tag} from {load_dir} (--finetune: iteration, "
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

        if other_layout is not None:
            print_rank_0(f"> random states cannot carry over from {other_layout} to "
                         f"{self.layout}: they restart from --seed")
        elif not config.no_load_rng:
            rng_path = os.path.join(load_dir, tag, rng_file_name(_rank()))
            saved_world = manifest.get("world_size")
            if os.path.isfile(rng_path) and saved_world in (None, _world_size()):
                result.rng_states = load_file(rng_path)
            elif not manifest:
                print_rank_0(f"> checkpoint {tag} has no per-rank random-state files (upstream "
                             "Megatron-DeepSpeed writes none): random states start from --seed")
            else:
                print_rank_0(f"> warning: checkpoint {tag} has no random states for this layout "
                              f"(saved with world size {saved_world}, --no-save-rng, or upstream); "
                              "random states start from --seed")
        if verified is not None:
            checked = f"checksums verified in {verified:.2f} s"
        elif config.verify_checkpoint:
            checked = "no checksums recorded"
        else:
            checked = "checksums not verified: --no-verify-checkpoint"
        print_rank_0(f"> loaded checkpoint {tag} from {load_dir} at iteration "
                     f"{self.state.iteration} (consumed samples "
                     f"{self.state.consumed_train_samples}"
                     f"{', optimizer state not loaded' if not load_optimizer else ''}) "
                     f"in {time.monotonic() - start:.2f} s ({checked})")
        self.loaded = result
        return result

    def restore_rng(self) -> None:
        """Apply the loaded RNG states (after every other RNG consumer was built)."""
        if self.loaded.rng_states is not None:
            restore_rng_states(self.loaded.rng_states)
