"""Keep freed host memory in the process for reuse when training on CPU (glibc malloc).

glibc serves every allocation above 32 MiB with a fresh `mmap` and returns it to the kernel
on free. A training step allocates and frees the same large tensors (the [tokens, vocab]
logits and their gradient, the cross-entropy's shifted copy, activations) once per micro-batch,
so each of them page-faults every page again: at the tiny GPT shape this first-touch work was
~25% of a CPU step (tests/bench/RESULTS.md, issue 18). Serving large blocks from the heap and
never trimming it makes the second micro-batch reuse the first one's pages. The price: the
process keeps its peak footprint (which a training loop reaches every step anyway).
Only the allocator's policy changes; no value computed changes.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_NEVER_TRIM = 2 ** 31 - 1  # bytes of free heap top kept before returning any (an int)


def retain_freed_memory() -> bool:
    """Make glibc malloc serve large blocks from the heap and keep freed memory. Returns
    whether it applied (False off Linux/glibc, e.g. musl or macOS, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a refused setting leaves the default policy in place
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
