"""tests.processes: a timeout or a failed exit leaves no process of the program behind.

The program under test is a tiny launcher: a python parent that starts a sleeping child (as
torchrun starts ranks), writes the child's pid to a file, then hangs or fails.
"""
import subprocess
import sys
import time

import psutil
import pytest

from tests import processes

_LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "stray-child"])
open(sys.argv[1], "w").write(str(child.pid))
print("launched", flush=True)
if sys.argv[2] == "hang":
    time.sleep(120)
sys.exit(int(sys.argv[2] == "fail"))
"""


def _launcher(tmp_path, mode):
    pid_file = tmp_path / "child.pid"
    return [sys.executable, "-c", _LAUNCHER, str(pid_file), mode], pid_file


def _child(pid_file) -> psutil.Process:
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the launcher never started its child"
        time.sleep(0.05)
    return psutil.Process(int(pid_file.read_text()))


def _gone(process: psutil.Process, wait: float = 5.0) -> bool:
    """True once the process has exited (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_timeout_kills_the_whole_group(tmp_path):
    command, pid_file = _launcher(tmp_path, "hang")
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        processes.run(command, timeout=3, capture_output=True, text=True)
    assert "launched" in raised.value.output  # the output so far comes with the error
    assert _gone(_child(pid_file)), "the launcher's child survived the timeout"


@pytest.mark.parametrize("mode", ["fail", "succeed"])
def test_exit_kills_what_the_program_left_behind(tmp_path, mode):
    command, pid_file = _launcher(tmp_path, mode)
    completed = processes.run(command, timeout=60)
    assert completed.returncode == (1 if mode == "fail" else 0)
    assert _gone(_child(pid_file)), f"the launcher's child survived its {mode}ed exit"


def test_check_raises_after_killing_the_group(tmp_path):
    command, pid_file = _launcher(tmp_path, "fail")
    with pytest.raises(subprocess.CalledProcessError):
        processes.run(command, timeout=60, check=True)
    assert _gone(_child(pid_file))


def test_plain_subprocess_timeout_leaves_the_child_running(tmp_path):
    """Why the helper exists (and proof that `_gone` can say no): subprocess.run kills only
    the launcher on a timeout."""
    command, pid_file = _launcher(tmp_path, "hang")
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(command, timeout=3, capture_output=True)
    child = _child(pid_file)
    try:
        assert not _gone(child, wait=0.5)
    finally:
        child.kill()


def test_kill_group_is_idempotent(tmp_path):
    command, pid_file = _launcher(tmp_path, "hang")
    process = processes.start(command)
    child = _child(pid_file)
    processes.kill_group(process)
    processes.kill_group(process)
    assert process.returncode is not None and _gone(child)
