"""DeepSpeed's CPU all-reduce maps one /dev/shm segment per rank when its launcher starts every
rank on one machine, and never unlinks them: each run would leave 64 MiB per rank in
memory-backed /dev/shm. pretrain_gpt.py unlinks them once every rank has mapped them. The control
run (DeepSpeed alone) shows the test can see a leftover segment.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes
from tests.functional.launch import (REPO_ROOT, free_port, losses_by_iteration, tiny_gpt_args,
                                     write_random_dataset)

SHM = Path("/dev/shm")
DEEPSPEED_ONLY = """
import datetime, deepspeed, torch
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False,
                           timeout=datetime.timedelta(minutes=2))
torch.distributed.barrier()
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")]


def _segments(port: int):
    return sorted(path.name for path in SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def _deepspeed_launch(port: int, script, *args, timeout: float = 300) -> str:
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
               "--master_port", str(port), str(script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    completed = processes.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-4000:]
    return completed.stdout


def test_deepspeed_alone_leaves_its_segments(tmp_path):
    script = tmp_path / "deepspeed_only.py"
    script.write_text(DEEPSPEED_ONLY)
    port = free_port()
    try:
        _deepspeed_launch(port, script)
        assert _segments(port) == [f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_{rank}"
                                   for rank in (0, 1)]
    finally:
        for name in _segments(port):
            (SHM / name).unlink()


def test_a_training_run_leaves_no_segment(tmp_path):
    dataset = write_random_dataset(tmp_path / "random_text_document")
    port = free_port()
    output = _deepspeed_launch(port, REPO_ROOT / "pretrain_gpt.py",
                               *tiny_gpt_args(dataset, train_iters=3,
                                              extra=["--tensor-model-parallel-size", "2"]))
    assert sorted(losses_by_iteration(output)) == [1, 2, 3], output[-3000:]
    assert _segments(port) == []

