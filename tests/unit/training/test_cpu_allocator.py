"""The CPU allocator policy applies on Linux/glibc and keeps allocating working (checked in a
child process: the policy is process-wide and would otherwise stay set for the whole session)."""
import subprocess
import sys
from pathlib import Path

from tests import processes

REPO = Path(__file__).resolve().parents[3]
CHILD = """
import sys
from megatron.training.cpu_allocator import retain_freed_memory
applied = retain_freed_memory()
blocks = [bytearray(64 << 20) for _ in range(3)]  # above glibc's mmap threshold
del blocks
again = bytearray(64 << 20)
print(applied, len(again) == 64 << 20)
"""


def test_retain_freed_memory_applies_and_allocation_still_works():
    out = processes.run([sys.executable, "-c", CHILD], cwd=REPO, timeout=60, check=True,
                        stdout=subprocess.PIPE, text=True).stdout.split()
    expected_applied = "True" if sys.platform.startswith("linux") else "False"
    assert out == [expected_applied, "True"]
