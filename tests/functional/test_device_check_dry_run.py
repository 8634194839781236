"""tests/gpu/device_check.sh in its CPU dry-run mode: every step (GPU tests, kernel benchmark,
bf16 training at a tiny size, the fp16 flags checked by the configuration) runs and passes,
and the report under $OUT names each step and the throughput line (tokens/s, MFU)."""
import os
import subprocess

import pytest

from tests import processes
from tests.functional.launch import REPO_ROOT

pytestmark = pytest.mark.slow


def test_device_check_dry_run(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), OMP_NUM_THREADS="1")
    done = processes.run(["bash", str(REPO_ROOT / "tests" / "gpu" / "device_check.sh")],
                         env=env, capture_output=True, text=True, timeout=150)
    report = (tmp_path / "device_check.md").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("a. GPU tests (exit 0", "b. fused softmax vs torch vs SDPA (exit 0",
                 "c. bf16 training (tiny) (exit 0", "d. fp16 flags",
                 "fp16 flags accepted for cuda", "failed steps: none"):
        assert step in report, step
    assert "tokens/s" in report and "MFU" in report
