"""The README's main command, end to end in a reduced form (a few iterations)."""
import os

import pytest

from tests import processes
from tests.functional.launch import REPO_ROOT, free_port, losses_by_iteration

pytestmark = pytest.mark.slow


def test_demo_trains_saves_resumes_and_evaluates(tmp_path):
    env = dict(os.environ, DEMO_TRAIN_ITERS="4", DEMO_DIR=str(tmp_path / "demo"),
               MASTER_PORT=str(free_port()))
    completed = processes.run(["bash", str(REPO_ROOT / "examples/demo.sh")], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=900)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    part1 = (tmp_path / "demo/logs/part1.log").read_text()
    part2 = (tmp_path / "demo/logs/part2.log").read_text()
    assert "exiting at iteration 2 (--exit-interval 2)" in part1
    assert "loaded checkpoint global_step2" in part2
    assert sorted(losses_by_iteration(part1)) == [2]
    assert sorted(losses_by_iteration(part2)) == [4]
    assert "validation loss at the end of training for test data" in part2
    assert (tmp_path / "demo/checkpoints/latest").read_text() == "global_step4"
    assert "Demo finished." in output
    assert list((tmp_path / "demo/tensorboard").glob("events.out.tfevents.*"))
    plot = tmp_path / "demo/plots/train_loss_vs_iteration.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(plot) in output
    samples = (tmp_path / "demo/samples.txt").read_text()
    assert samples.count("\nContext:") == 3 and samples.count("\nMegatron-LM:") == 3
    assert samples in output
