"""Loading a checkpoint executes no code, whatever its files hold.

A `.pt` file is a pickle, and plain unpickling calls whatever importable function the file
names: a crafted `mp_rank_00_model_states.pt` would run its command at `--load`. Every file
a load reads is therefore unpickled by `torch.load(weights_only=True)`, which builds tensors,
plain Python values and the classes of `allowed_globals()` and calls nothing else. The
allow-list is handed to torch only for the duration of a load (`allow_checkpoint_contents`),
so torch's process-wide list is the same before and after.

How every read gets there (DeepSpeed 0.19.8):

- This project's own reads (the fingerprint in the model states, the RNG files, the
  `--no-save-optim` rewrite) call `load_file`.
- DeepSpeed reads the model states (`engine._load_checkpoint` through its `SDLoader`), the
  pipeline layer files (`PipelineModule.load_state_dir`) and the ZeRO shards
  (`engine._get_all_zero_checkpoint_state_dicts`) through `engine.checkpoint_engine.load`.
  `deepspeed_loads_weights_only(engine)` puts a `WeightsOnlyCheckpointEngine` there for the
  duration of `engine.load_checkpoint`: it wraps the engine DeepSpeed built (the plain torch
  one or a configured fast writer) and replaces only `load`; saves never see it.
- A few DeepSpeed paths call `torch.load(weights_only=False)` themselves (ZeRO-3 module-only
  loads through `utils/zero_to_fp32.py`, universal checkpoints). Inside the same window
  `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` makes torch load weights only there too.

Before any rank unpickles anything, `refuse_unsafe_files` checks every `.pt` file of the
checkpoint folder (the ranks share the files, as `integrity.py` does) by unpickling it weights
only onto the meta device: the same unpickler as the real load, without reading tensor data.
The ranks then decide together, so a file only some ranks would read is refused on every
rank with the same line, and none waits forever in a collective for a rank that stopped.
`torch.serialization.get_unsafe_globals_in_checkpoint` was not used for this check: it cannot
read legacy (non-zip) files and passes files whose allowed constructors build objects of a
type the real load then refuses.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pickle
import re
import warnings
from typing import Any, Iterator, List, Optional, Tuple

import torch

from megatron.checkpointing.errors import CheckpointError
from megatron.checkpointing.shared_work import gather_to_all_ranks, rank_share
from megatron.core.enums import ModelType

REFUSAL = "refusing to load it"
_NOT_ALLOWED = "which is not on the allow-list of checkpoint contents"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_PROTOCOL_WARNING = "Detected pickle protocol"  # a crafted file's; it is refused anyway
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


@functools.lru_cache(maxsize=None)
def allowed_globals() -> Tuple[Tuple[Any, str], ...]:
    """What a checkpoint may contain besides torch's own weights-only set (tensors, storages,
    dtypes, `torch.Size`, `collections.OrderedDict`, `builtins.set`, `_codecs.encode`), as
    `(object, "name in the pickle")`: exactly what upstream's, DeepSpeed's and this project's
    files pickle."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return (
        # `args` of upstream and of this project; `explicit_args` of older files of this project.
        (argparse.Namespace, "argparse.Namespace"),
        (frozenset, "builtins.frozenset"),
        (ModelType, "megatron.core.enums.ModelType"),
        # numpy RNG states (`np.random.get_state()`: a uint32 array), pickled by numpy 2 or 1.
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        (type(np.dtype(np.uint32)), "numpy.dtypes.UInt32DType"),
        # DeepSpeed's ZeRO / bf16 optimizer shards.
        (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
        (DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
        (ZeroStageEnum, "deepspeed.runtime.zero.config.ZeroStageEnum"),
        (fragment_address, "deepspeed.utils.tensor_fragment.fragment_address"),
    )


@contextlib.contextmanager
def allow_checkpoint_contents() -> Iterator[None]:
    """Torch's weights-only unpickler accepts `allowed_globals()` inside this block only.

    Entries already allowed (by the caller or an enclosing block) are left alone, so nesting
    and a caller's own `add_safe_globals` survive the block's exit."""
    present = set(torch.serialization.get_safe_globals())
    added = [entry for entry in allowed_globals() if entry not in present]
    with torch.serialization.safe_globals(added):
        yield


def _reason(error: BaseException) -> str:
    """Why torch's weights-only unpickler refused a file, as a clause after 'file X'."""
    message = str(error)
    found = _GLOBAL_IN_MESSAGE.search(message)
    if found:
        name = found.group(1)  # torch drops the "builtins." of builtins
        return f"needs {name if '.' in name else 'builtins.' + name}, {_NOT_ALLOWED}"
    detail = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    detail = " ".join(detail.split())[:200] or type(error).__name__
    return f"cannot be loaded as weights only ({detail})"


def refusal(path: str, reason: str) -> str:
    return f"checkpoint file {path} {reason}; {REFUSAL}"


def load_file(path: str, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load` of a checkpoint file, weights only, with the checkpoint allow-list.

    Raises `CheckpointError` (one line naming the file and the global) instead of running
    anything the file names outside the allow-list."""
    with allow_checkpoint_contents(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING)
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as error:
            raise CheckpointError(refusal(path, _reason(error))) from None


def unsafe_content(path: str) -> Optional[str]:
    """Why `path` may not be loaded ('needs os.system, which ...'), or None when it may.

    Unpickles the file weights only onto the meta device (tensor data is not read). Never
    raises: a file that cannot be read at all is reported, not loaded."""
    try:
        with allow_checkpoint_contents(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING)
            torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as error:
        return _reason(error)
    except Exception as error:  # not a torch.save file, TorchScript, truncated, unreadable
        detail = " ".join(str(error).split())[:200]
        return f"cannot be read as a torch.save file ({type(error).__name__}: {detail})"
    return None


def checkpoint_files(tag_dir: str) -> List[str]:
    """Every `.pt` file under `tag_dir`, relative and sorted (what a load may unpickle)."""
    names = []
    for root, _, files in os.walk(tag_dir):
        for name in files:
            if name.endswith(".pt"):
                names.append(os.path.relpath(os.path.join(root, name), tag_dir))
    return sorted(names)


def refuse_unsafe_files(load_dir: str, tag_dir: str) -> None:
    """Raise `CheckpointError` on every rank when any `.pt` file of `tag_dir` needs a global
    outside the allow-list (or cannot be read), before any rank unpickles anything.

    Collective: every rank must call it with the same folder; rank r checks files r,
    r + world, ... and the ranks share what they found."""
    names = checkpoint_files(tag_dir)
    problems = []
    for name in rank_share(names):
        path = os.path.join(tag_dir, name)
        reason = unsafe_content(path)
        if reason is not None:
            problems.append(refusal(path, reason))
    problems = sorted(gather_to_all_ranks(problems))
    if problems:
        others = len(problems) - 1
        more = f" (and {others} more file{'s' if others > 1 else ''})" if others else ""
        raise CheckpointError(f"--load {load_dir}: {problems[0]}{more}")


class WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine whose `load` unpickles weights only (`load_file`);
    everything else (saving, commit, writer selection) is the wrapped engine's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"WeightsOnly({getattr(inner, 'name', type(inner).__name__)})"

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_file(path, map_location=map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.contextmanager
def _torch_loads_weights_only() -> Iterator[None]:
    """Inside the block `torch.load` loads weights only even where a caller asks otherwise."""
    saved = {key: os.environ.get(key) for key in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def deepspeed_loads_weights_only(engine: Any) -> Iterator[None]:
    """Around `engine.load_checkpoint(...)`: every file DeepSpeed reads is unpickled weights
    only with the checkpoint allow-list; the engine and torch are as before afterwards."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(original)
    try:
        with allow_checkpoint_contents(), _torch_loads_weights_only():
            yield
    finally:
        engine.checkpoint_engine = original


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, ModelType)):
        return value
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=repr)
    if type(value) in (list, tuple):
        return type(value)(_plain(item) for item in value)
    if type(value) is dict:
        return {key: _plain(item) for key, item in value.items()}
    return str(value)


def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` for a checkpoint holding only values that load without an allow-list
    entry beyond the Namespace itself: sets (`explicit_args`) become sorted lists, other
    objects their `str`; upstream's `ModelType` and torch dtypes stay."""
    return argparse.Namespace(**{name: _plain(value) for name, value in vars(args).items()})


def check_tag(load_dir: str, tag: str, *, source: str, from_file: bool) -> None:
    """The tag must name a folder inside `load_dir`: read from `latest` or the iteration
    tracker (`from_file`) it must be `global_stepN`; `--load-tag` may be any relative path
    that stays inside. No absolute path, no `..`, no symlink that leads out of `load_dir`."""
    shown = repr(tag if len(tag) <= 80 else tag[:80] + "...")
    if from_file and not re.fullmatch(r"global_step[0-9]+", tag):
        raise CheckpointError(f"--load {load_dir}: {source} names checkpoint {shown}, which is not "
                              "of the form global_stepN; pass --load-tag to load another folder")
    outside = (not tag or "\x00" in tag or os.path.isabs(tag)
               or ".." in tag.replace("\\", "/").split("/"))
    if not outside:
        root = os.path.realpath(load_dir)
        inside = os.path.realpath(os.path.join(load_dir, tag))
        outside = inside == root or os.path.commonpath([root, inside]) != root
    if outside:
        raise CheckpointError(f"--load {load_dir}: {source} names checkpoint {shown}, which is not "
                              f"a folder inside {load_dir}; {REFUSAL}")
