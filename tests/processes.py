"""Child processes of tests, each the leader of its own process group.

A launcher (torchrun, the deepspeed runner, a bash example script) starts ranks of its own;
killing only the launcher on a timeout leaves those ranks running, holding ports, files and
the pipes the test reads. Every test therefore starts programs here: `start` puts the child
in a new session (its pid is the group id) and `kill_group` SIGKILLs everything in that
group. `run` is `subprocess.run` with that cleanup: when it returns or raises, nothing
the program started is left running.
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Any, Optional, Sequence


def start(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(command, ...)` as the leader of a new process group."""
    if "start_new_session" in popen_kwargs or "process_group" in popen_kwargs:
        raise ValueError("tests.processes.start always starts a new session")
    return subprocess.Popen(list(command), start_new_session=True, **popen_kwargs)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process still in `process`'s group (the leader included) and every
    descendant of the leader (launchers put ranks into sessions of their own), and reap the
    leader. Safe to call more than once and after the leader has exited."""
    import psutil

    try:  # torchrun starts every rank in a session of its own: find them first
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # nobody left in the group
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def run(command: Sequence[str], *, timeout: Optional[float], check: bool = False,
        capture_output: bool = False, input: Optional[str] = None,
        **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` whose timeout and failures take the whole process group down.

    `timeout` is in seconds; None (benchmarks only) waits as long as it takes, still
    cleaning up after a failure or a Ctrl-C. On a timeout the group is killed and
    `subprocess.TimeoutExpired` raised (with the output captured so far). After the program
    exits, whatever it left behind in its group (ranks of a failed launch, a stray daemon)
    is killed before returning, or before raising `CalledProcessError` for a non-zero exit
    with `check`.
    """
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    process = start(command, **popen_kwargs)
    try:
        stdout, stderr = process.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr)
    except BaseException:  # e.g. KeyboardInterrupt: leave nothing running
        kill_group(process)
        raise
    kill_group(process)
    if process.returncode != 0 and check:
        raise subprocess.CalledProcessError(process.returncode, process.args, stdout, stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
