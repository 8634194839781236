"""Finds the compiled C++ helpers, or compiles them once into a user cache.

Order: the extension built at install time (`megatron.data.helpers_cpp`), then a copy in
`$MEGATRON_CACHE_DIR` (default `~/.cache/megatron_ds`) keyed by the source hash, built under
a file lock with the C++ compiler and pybind11's headers. If no compiler works, callers use
the numpy twins (a warning says so).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
import warnings
from types import ModuleType
from typing import Optional

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers.cpp")
_cached: Optional[ModuleType] = None
_tried = False


def _cache_dir() -> str:
    root = os.environ.get("MEGATRON_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "megatron_ds")
    return os.path.join(root, "data_helpers")


def _load_from(path: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader("megatron.data.helpers_cpp", path)
    spec = importlib.util.spec_from_file_location("megatron.data.helpers_cpp", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def compile_helpers(target_dir: str) -> str:
    """Compile helpers.cpp into `target_dir` (once, under a lock); returns the .so path."""
    import pybind11

    with open(_SOURCE, "rb") as handle:
        digest = hashlib.sha256(handle.read() + sys.version.encode()).hexdigest()[:16]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = os.path.join(target_dir, f"helpers_cpp_{digest}{suffix}")
    os.makedirs(target_dir, exist_ok=True)
    with open(os.path.join(target_dir, f".lock_{digest}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.isfile(target):
                compiler = os.environ.get("CXX", "c++")
                partial = f"{target}.tmp{os.getpid()}"
                command = [compiler, "-O3", "-shared", "-std=c++17", "-fPIC",
                           f"-I{pybind11.get_include()}",
                           f"-I{sysconfig.get_paths()['include']}", _SOURCE, "-o", partial]
                result = subprocess.run(command, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise RuntimeError(f"compiling {_SOURCE} failed:\n{result.stderr[-2000:]}")
                os.replace(partial, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def load_helpers() -> Optional[ModuleType]:
    """The C++ helpers module, or None when it cannot be built here (use the numpy twins)."""
    global _cached, _tried
    if _tried:
        return _cached
    _tried = True
    try:
        from megatron.data import helpers_cpp  # type: ignore[attr-defined]

        _cached = helpers_cpp
        return _cached
    except ImportError:
        pass
    try:
        _cached = _load_from(compile_helpers(_cache_dir()))
    except Exception as error:  # noqa: BLE001 - any toolchain problem means "use numpy"
        warnings.warn(f"C++ data helpers unavailable ({error}); using the numpy versions")
        _cached = None
    return _cached
