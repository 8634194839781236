"""Two "nodes" on one machine through the DeepSpeed launcher, as on a cluster without ssh:
a hostfile naming two hosts (`localhost` and `127.0.0.1`: the launcher rejects a host named
twice), one `deepspeed --no_ssh --node_rank K --master_addr 127.0.0.1` per node, two ranks each,
TP2 x PP2. Checked: every rank's global and local rank and node, its tensor/pipeline/data
groups (tensor parallel inside a node), the losses against one node with four ranks, and that
the two-node checkpoint resumes on one node and ends with the same weights.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes
from tests.functional.launch import (REPO_ROOT, free_port, losses_by_iteration, run_pretrain,
                                     tiny_gpt_args, write_random_dataset)
from tests.functional.test_checkpointing import _weights

pytestmark = pytest.mark.slow
RANK_REPORT_ENTRY = Path(__file__).with_name("rank_report_entry.py")
ITERATIONS, STOP = 6, 3
LAYOUT = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]


def _launch_two_nodes(args, hostfile: Path, report_dir: Path, *, timeout: float = 300):
    """Both nodes' launchers started at once; (exit codes, outputs) of node 0 and node 1."""
    port = free_port()
    report_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
               RANK_REPORT_DIR=str(report_dir))
    nodes = []
    try:
        for node in (0, 1):
            nodes.append(processes.start(
                [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile),
                 "--no_ssh", "--node_rank", str(node), "--master_addr", "127.0.0.1",
                 "--master_port", str(port), str(RANK_REPORT_ENTRY), *args],
                cwd=REPO_ROOT, env=dict(env, RANK_REPORT_LAUNCHER=str(node)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            processes.kill_group(node)
    return [node.returncode for node in nodes], outputs


def _reports(report_dir: Path):
    """Every rank's report, by node, in rank order."""
    reports = sorted((json.loads(path.read_text()) for path in report_dir.glob("rank*.json")),
                     key=lambda report: report["rank"])
    return {node: [r for r in reports if r["launched_by"] == node] for node in (0, 1)}


def test_two_nodes_place_ranks_and_groups_and_their_checkpoint_resumes_on_one(tmp_path):
    dataset = write_random_dataset(tmp_path / "random_text_document")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n127.0.0.1 slots=2\n")

    def args(*extra):
        return tiny_gpt_args(dataset, train_iters=ITERATIONS, extra=[*LAYOUT, *extra])

    reference_dir = tmp_path / "one-node"
    reference = losses_by_iteration(run_pretrain(
        args("--save", str(reference_dir), "--save-interval", "1000"), num_procs=4,
        launcher="deepspeed"))
    assert sorted(reference) == list(range(1, ITERATIONS + 1))

    directory = tmp_path / "checkpoints"
    codes, outputs = _launch_two_nodes(
        args("--save", str(directory), "--save-interval", str(STOP), "--exit-interval", str(STOP)),
        hostfile, tmp_path / "reports")
    assert codes == [0, 0], "\n".join(output[-3000:] for output in outputs)

    reports = _reports(tmp_path / "reports")
    assert [(r["rank"], r["env_rank"], r["local_rank"], r["node"], r["world"])
            for node in (0, 1) for r in reports[node]] == [
        (0, 0, 0, 0, 4), (1, 1, 1, 0, 4), (2, 2, 0, 1, 4), (3, 3, 1, 1, 4)]
    groups = {r["rank"]: r for node in (0, 1) for r in reports[node]}
    # Megatron's order: tensor-parallel ranks are adjacent (one node), pipeline stages span nodes.
    assert [groups[rank]["tensor"] for rank in range(4)] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [groups[rank]["pipeline"] for rank in range(4)] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert [groups[rank]["data"] for rank in range(4)] == [[0], [1], [2], [3]]

    # The last stage (node 1) logs the losses; both nodes' ranks wrote into one folder.
    assert losses_by_iteration(outputs[1]) == {i: reference[i] for i in range(1, STOP + 1)}
    assert (directory / "latest").read_text() == f"global_step{STOP}"
    assert sorted(p.name for p in (directory / f"global_step{STOP}").glob("mp_rank_*")) == [
        f"mp_rank_0{rank}_model_states.pt" for rank in range(4)]

    resumed = run_pretrain(args("--save", str(directory), "--save-interval", "1000",
                                "--load", str(directory)), num_procs=4, launcher="deepspeed")
    assert f"loaded checkpoint global_step{STOP}" in resumed
    assert losses_by_iteration(resumed) == {i: reference[i] for i in range(STOP + 1, ITERATIONS + 1)}
    final = _weights(directory / f"global_step{ITERATIONS}")
    expected = _weights(reference_dir / f"global_step{ITERATIONS}")
    assert final.keys() == expected.keys() and final
    for name, tensor in expected.items():
        assert (final[name] == tensor).all(), name
