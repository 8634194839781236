"""Multi-process test harness: persistent gloo worker pools, one per world size.

Starting a process group costs a fresh `import torch` and a rendezvous on every rank, so
each world size gets one pool for the whole pytest session and every check reuses it:

    results = run_on_ranks(fn, *args, world_size=4, timeout=120, **kwargs)

runs the module-level function ``fn(*args, **kwargs)`` on every rank (torch.distributed
already initialized with gloo, one thread per rank) and returns the per-rank return values.
A rank that raises makes the call fail with that rank's traceback; a call that does not
finish within ``timeout`` seconds fails and the pool is discarded (the next call starts a
new one), so a hang can never pass as a success.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

_SHUTDOWN = None
# How long the surviving ranks get to report after one rank failed: they may be blocked
# in a collective that the failed rank will never join.
_GRACE_AFTER_FAILURE_S = 10.0


class RankFailure(RuntimeError):
    """A function raised on one or more ranks; the message carries the tracebacks."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_global_state() -> None:
    """Undo module-level state that checks may leave behind on a rank."""
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and hasattr(parallel_state, "destroy_model_parallel"):
        parallel_state.destroy_model_parallel()


def _worker_main(rank: int, world_size: int, port: int, sys_path: List[str],
                 tasks: "multiprocessing.Queue", results: "multiprocessing.Queue") -> None:
    sys.path[:] = sys_path
    os.environ.update({
        "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
    })
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=300))
    results.put(("ready", rank, True, None))
    while True:
        task = tasks.get()
        if task is _SHUTDOWN:
            break
        call_id, fn, args, kwargs = task
        try:
            value = fn(*args, **kwargs)
            outcome = (call_id, rank, True, value)
        except BaseException:  # noqa: BLE001 - report anything, including SystemExit
            outcome = (call_id, rank, False, f"[rank {rank}] " + traceback.format_exc())
        finally:
            try:
                _reset_global_state()
            except Exception:  # noqa: BLE001
                outcome = (call_id, rank, False,
                           f"[rank {rank}] state reset failed:\n" + traceback.format_exc())
        try:
            results.put(outcome)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable return value
            results.put((call_id, rank, False,
                         f"[rank {rank}] could not send the result back:\n" + traceback.format_exc()))
    dist.destroy_process_group()


class WorkerPool:
    """World-size-N gloo process group kept alive between calls."""

    def __init__(self, world_size: int, start_timeout: float = 180.0) -> None:
        self.world_size = world_size
        context = multiprocessing.get_context("spawn")
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(world_size)]
        port = _free_port()
        self._processes = [
            context.Process(target=_worker_main, daemon=True,
                            args=(rank, world_size, port, list(sys.path), self._tasks[rank],
                                  self._results))
            for rank in range(world_size)
        ]
        for process in self._processes:
            process.start()
        self._next_call = 0
        ready = self._collect("ready", start_timeout)
        failures = [value for ok, value in ready.values() if not ok]
        if len(ready) < world_size or failures:
            self.close(force=True)
            raise RankFailure(f"worker pool of {world_size} did not start: {failures}")

    def _collect(self, call_id: Any, timeout: float) -> Dict[int, tuple]:
        deadline = time.monotonic() + timeout
        answers: Dict[int, tuple] = {}
        while len(answers) < self.world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if any(not p.is_alive() for p in self._processes) and not self._results.qsize():
                # A dead rank never answers; give the queue a moment to drain, then stop.
                remaining = min(remaining, 1.0)
            try:
                answer_id, rank, ok, value = self._results.get(timeout=remaining)
            except queue.Empty:
                if any(not p.is_alive() for p in self._processes):
                    break
                continue
            if answer_id == call_id:
                answers[rank] = (ok, value)
                if not ok:
                    deadline = min(deadline, time.monotonic() + _GRACE_AFTER_FAILURE_S)
        return answers

    def run(self, fn: Callable, args: tuple, kwargs: dict, timeout: float) -> List[Any]:
        call_id = self._next_call
        self._next_call += 1
        for task_queue in self._tasks:
            task_queue.put((call_id, fn, args, kwargs))
        answers = self._collect(call_id, timeout)
        failures = [answers[r][1] for r in sorted(answers) if not answers[r][0]]
        missing = [r for r in range(self.world_size) if r not in answers]
        if failures or missing:
            self.close(force=True)
            detail = "\n".join(failures)
            if missing:
                dead = [r for r, p in enumerate(self._processes) if not p.is_alive()]
                detail += (f"\nranks {missing} gave no answer within {timeout:.0f}s"
                           f" (dead processes: {dead})")
            raise RankFailure(f"{fn.__module__}.{fn.__qualname__} failed on "
                              f"world size {self.world_size}:\n{detail}")
        return [answers[rank][1] for rank in range(self.world_size)]

    @property
    def alive(self) -> bool:
        return all(process.is_alive() for process in self._processes)

    def close(self, force: bool = False) -> None:
        if not force:
            for task_queue in self._tasks:
                try:
                    task_queue.put(_SHUTDOWN)
                except Exception:  # noqa: BLE001
                    pass
            for process in self._processes:
                process.join(timeout=10)
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if _POOLS.get(self.world_size) is self:
            del _POOLS[self.world_size]


_POOLS: Dict[int, WorkerPool] = {}


def get_pool(world_size: int) -> WorkerPool:
    pool = _POOLS.get(world_size)
    if pool is None or not pool.alive:
        if pool is not None:
            pool.close(force=True)
        pool = WorkerPool(world_size)
        _POOLS[world_size] = pool
    return pool


def run_on_ranks(fn: Callable, *args: Any, world_size: int, timeout: float = 120.0,
                 **kwargs: Any) -> List[Any]:
    """Run ``fn(*args, **kwargs)`` on every rank of a ``world_size`` pool; per-rank results."""
    if getattr(fn, "__module__", None) == "__main__" or "<locals>" in fn.__qualname__:
        raise ValueError(f"{fn.__qualname__}: the harness needs a module-level, importable function")
    return get_pool(world_size).run(fn, args, kwargs, timeout)


def shutdown_pools(only: Optional[int] = None) -> None:
    for world_size in list(_POOLS):
        if only is None or world_size == only:
            _POOLS[world_size].close()


atexit.register(shutdown_pools)
