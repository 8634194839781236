"""SIGKILL of every rank at each phase of a save, with 2 ranks (DP2 on the ZeRO engine, PP2 on
the pipeline engine): the newest `latest` always loads, the resumed run continues with the
uninterrupted run's losses and ends with its weights (bit-identical: same layout, dropout on,
random states restored), and nothing a killed save left behind survives the next start.

Kill points (`megatron.checkpointing.SaveHooks`, reached through tests/functional/fault_entry.py):
before any file; after one rank wrote its files while the other has not started (only rank 1
stalls before DeepSpeed's files); after DeepSpeed's files; before the commit; after the rename
and before the trackers; between the two tracker writes. Also: a write error during a save
(a full disk) on one rank or on all, and SIGTERM with --exit-signal-handler then a resume:
both continue exactly as the uninterrupted run.
"""
import os

import pytest

from tests import processes
from tests.functional.launch import REPO_ROOT, losses_by_iteration, pretrain_command, run_pretrain
from tests.functional.test_checkpointing import N, _args, _read_until, _start, _weights, dataset  # noqa: F401

pytestmark = pytest.mark.slow
FAULT_ENTRY = str(__import__("pathlib").Path(__file__).parent / "fault_entry.py")
LAYOUTS = {"dp2": ["--no-pipeline-parallel"], "pp2": ["--pipeline-model-parallel-size", "2"]}
# name -> (layout, phase, ranks that stall or None for all, the tag `latest` names after it)
KILLS = {
    "dp2 before any file": ("dp2", "before_engine_files", None, N),
    "dp2 one rank wrote": ("dp2", "before_engine_files", "1", N),
    "dp2 after engine files": ("dp2", "after_engine_files", None, N),
    "dp2 before commit": ("dp2", "before_commit", None, N),
    "dp2 after rename": ("dp2", "after_rename", None, N),
    "dp2 between trackers": ("dp2", "between_trackers", None, 2 * N),
    "pp2 one rank wrote": ("pp2", "before_engine_files", "1", N),
    "pp2 before commit": ("pp2", "before_commit", None, N),
    "pp2 between trackers": ("pp2", "between_trackers", None, 2 * N),
}
_references = {}


def _reference(dataset, layout, tmp_path_factory):
    if layout not in _references:
        directory = tmp_path_factory.mktemp(f"straight-{layout}")
        output = run_pretrain(_args(dataset, *LAYOUTS[layout], "--save", str(directory),
                                    "--save-interval", str(N)), num_procs=2)
        _references[layout] = (losses_by_iteration(output), _weights(directory / f"global_step{2 * N}"))
    return _references[layout]


@pytest.mark.parametrize("kill", list(KILLS))
def test_kill_at_each_phase_of_a_save(kill, dataset, tmp_path, tmp_path_factory):
    layout, phase, ranks, latest_after = KILLS[kill]
    losses, weights = _reference(dataset, layout, tmp_path_factory)
    directory = tmp_path / "checkpoints"
    args = _args(dataset, *LAYOUTS[layout], "--save", str(directory), "--save-interval", str(N))
    env = {"STALL_IN_SAVE": f"{phase}:{2 * N}:300", **({"STALL_RANKS": ranks} if ranks else {})}
    process = _start(args, num_procs=2, env=env, script=FAULT_ENTRY)
    try:
        _read_until(process, f"stalling 300 s at {phase} of global_step{2 * N}")
    finally:
        processes.kill_group(process)  # SIGKILL to every rank: no handler, no cleanup
    assert (directory / "latest").read_text() == f"global_step{latest_after}"

    resumed = run_pretrain([*args, "--load", str(directory)], num_procs=2)
    assert f"loaded checkpoint global_step{latest_after}" in resumed
    assert losses_by_iteration(resumed) == {i: loss for i, loss in losses.items() if i > latest_after}
    assert (directory / "latest").read_text() == f"global_step{2 * N}"
    assert (directory / "latest_checkpointed_iteration.txt").read_text() == str(2 * N)
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith((".saving", ".replaced"))]
    assert not leftovers
    final = _weights(directory / f"global_step{2 * N}")
    assert final.keys() == weights.keys()
    for name, tensor in weights.items():
        assert (final[name] == tensor).all(), name


@pytest.mark.parametrize("ranks", ["1", None], ids=["one rank", "every rank"])
def test_a_failed_write_ends_the_run_and_keeps_the_previous_checkpoint(ranks, dataset, tmp_path,
                                                                       tmp_path_factory):
    losses, _ = _reference(dataset, "dp2", tmp_path_factory)
    directory = tmp_path / "checkpoints"
    args = _args(dataset, *LAYOUTS["dp2"], "--save", str(directory), "--save-interval", str(N))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "FAIL_WRITES_IN_SAVE": str(2 * N), **({"STALL_RANKS": ranks} if ranks else {})}
    completed = processes.run(pretrain_command(num_procs=2, script=FAULT_ENTRY) + args,
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("pretrain_gpt.py: error:")]
    assert len(errors) == 2, output[-3000:]  # one line per rank, nobody left waiting
    failed = "rank 1" if ranks else "ranks 0, 1"
    for line in errors:
        assert (f"--save {directory}: writing checkpoint global_step{2 * N} failed on {failed}"
                in line and "the previous checkpoint and the tracker files are untouched" in line)
    assert (directory / "latest").read_text() == f"global_step{N}"
    assert (directory / "latest_checkpointed_iteration.txt").read_text() == str(N)
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == [f"global_step{N}"]
    resumed = run_pretrain([*args, "--load", str(directory)], num_procs=2)
    assert losses_by_iteration(resumed) == {i: loss for i, loss in losses.items() if i > N}


def test_sigterm_then_resume_continues_the_uninterrupted_run(dataset, tmp_path):
    import signal

    import psutil

    iterations = 20
    args = _args(dataset, *LAYOUTS["dp2"], "--exit-signal-handler", iterations=iterations)
    straight = losses_by_iteration(run_pretrain(args, num_procs=2))
    directory = tmp_path / "checkpoints"
    saving = [*args, "--save", str(directory), "--save-interval", "1000"]
    process = _start(saving, num_procs=2)
    try:
        _read_until(process, "iteration        2/")
        ranks = [child for child in psutil.Process(process.pid).children(recursive=False)
                 if "pretrain_gpt.py" in " ".join(child.cmdline())]
        ranks[0].send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        processes.kill_group(process)
    assert process.returncode == 0, rest[-3000:]
    stopped = int((directory / "latest").read_text().removeprefix("global_step"))
    assert 2 <= stopped < iterations
    resumed = losses_by_iteration(run_pretrain([*saving, "--load", str(directory)], num_procs=2))
    assert resumed == {i: loss for i, loss in straight.items() if i > stopped}
