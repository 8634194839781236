"""Loads the fused softmax CUDA extension, building it once on first use.

Order of attempts on a CUDA machine: the module setup.py built ahead of time
(MEGATRON_BUILD_FUSED_KERNELS=1), else a just-in-time build with ninja through
`torch.utils.cpp_extension.load` into a per-(python, torch, CUDA) cache directory. The build
runs under an inter-process file lock so that the ranks of a job started together build once
and then load the result. Any failure gives one warning and `None`: the caller uses the torch
path. On a machine without CUDA nothing CUDA-specific is imported or compiled.
"""
import importlib
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from . import build_spec

# Overrides the cache directory (default: $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions,
# then megatron_fused_kernels/<python, torch and CUDA versions>).
CACHE_DIR_ENV = "MEGATRON_FUSED_KERNELS_DIR"
LOCK_FILE_NAME = "build.lock"
# A build that holds the lock longer than this is presumed hung: the waiting rank falls back.
LOCK_TIMEOUT_S = 3600.0
# torch's own "build in progress" marker; a build killed midway leaves it behind and then
# every later build waits on it forever.
TORCH_BATON_NAME = "lock"


@dataclass
class _LoadState:
    attempted: bool = False
    module: Optional[ModuleType] = None


_STATE = _LoadState()
_STATE_LOCK = threading.Lock()


def fused_kernels_cache_dir() -> Path:
    """Directory the JIT build writes to, one per Python/torch/CUDA combination."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "torch_extensions")
        root = os.path.join(base, "megatron_fused_kernels")
    tag = (f"py{sys.version_info[0]}{sys.version_info[1]}"
           f"_torch{torch.__version__}_cuda{torch.version.cuda}")
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", tag)


def load_fused_kernels(*, verbose: bool = False) -> Optional[ModuleType]:
    """The extension module, or None where it cannot be used (no CUDA, or the build failed).

    The first call decides, later calls return the same answer; `verbose` shows the build log.
    """
    with _STATE_LOCK:
        if not _STATE.attempted:
            _STATE.module = _load(verbose)
            _STATE.attempted = True
        return _STATE.module


def fused_kernels_available() -> bool:
    """Whether the fused softmax kernels can run here (builds them on first call on CUDA)."""
    return load_fused_kernels() is not None


def build_locked(build_dir: Path, *, verbose: bool = False,
                 timeout: Optional[float] = None) -> ModuleType:
    """Builds (or reloads an up-to-date build) in `build_dir` while holding its file lock.

    Waits at most `timeout` seconds (default LOCK_TIMEOUT_S) for another process's build.
    """
    import filelock

    build_dir.mkdir(parents=True, exist_ok=True)
    wait_s = LOCK_TIMEOUT_S if timeout is None else timeout
    with filelock.FileLock(str(build_dir / LOCK_FILE_NAME), timeout=wait_s):
        # Holding our lock means no build of ours runs in this directory: a torch marker
        # found now was left by a killed build.
        baton = build_dir / TORCH_BATON_NAME
        if baton.exists():
            baton.unlink()
        return _compile_extension(build_dir, verbose)


def _load(verbose: bool) -> Optional[ModuleType]:
    if not torch.cuda.is_available():
        return None
    if torch.version.hip is not None:
        _warn_fallback("they are written for NVIDIA GPUs (32-thread warps) and are not built "
                       "on ROCm", None)
        return None
    prebuilt = _import_prebuilt()
    if prebuilt is not None:
        return prebuilt
    build_dir = fused_kernels_cache_dir()
    try:
        return build_locked(build_dir, verbose=verbose)
    except Exception as error:  # noqa: BLE001 - any build or load failure means fall back
        _warn_fallback(f"building them in {build_dir} failed: {_describe(error)}", build_dir)
        return None


def _import_prebuilt() -> Optional[ModuleType]:
    try:
        return importlib.import_module(build_spec.EXTENSION_NAME)
    except ImportError:
        return None


def _compile_extension(build_dir: Path, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=build_spec.JIT_NAME,
        sources=[str(path) for path in build_spec.source_paths()],
        extra_cflags=list(build_spec.CXX_FLAGS),
        extra_cuda_cflags=list(build_spec.NVCC_FLAGS),
        extra_include_paths=[str(build_spec.KERNEL_DIR)],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _describe(error: BaseException, limit: int = 2000) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def _warn_fallback(reason: str, build_dir: Optional[Path]) -> None:
    retry = (f" To retry, fix the cause and delete {build_dir} (or point {CACHE_DIR_ENV} "
             "elsewhere)." if build_dir is not None else "")
    warnings.warn(
        f"Megatron fused softmax kernels are unavailable: {reason}. Falling back to the torch "
        f"softmax path (same results, slower).{retry}",
        RuntimeWarning,
        stacklevel=4,
    )
