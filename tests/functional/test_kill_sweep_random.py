"""A randomized kill sweep: one DP2 run is SIGKILLed again and again at random moments of its
saves (a random save, phase and rank, then a random delay of up to a quarter second, so the kill
lands in DeepSpeed's writes, the commit, the tracker writes or just after), and resumed each
time from whatever `latest` names. Every resumed stretch must print the uninterrupted run's
losses, `latest` must never go back, the last stretch must end with the uninterrupted run's
weights (bit-identical) and no staging folder may survive.

CI runs 20 kills with a fixed seed; a longer sweep is the same test with
KILL_SWEEP_KILLS=200 KILL_SWEEP_SEED=<n> in the environment.
"""
import os
import random
import time

import pytest

from tests import processes
from tests.functional.launch import losses_by_iteration, run_pretrain, tiny_gpt_args
from tests.functional.test_checkpointing import _read_until, _start, _weights, dataset  # noqa: F401

pytestmark = pytest.mark.slow
FAULT_ENTRY = str(__import__("pathlib").Path(__file__).parent / "fault_entry.py")
KILLS = int(os.environ.get("KILL_SWEEP_KILLS", "20"))
SEED = int(os.environ.get("KILL_SWEEP_SEED", "20261201"))
# A stretch reaches its target save, then runs on for the delay: room for a few iterations each.
ITERATIONS = 5 * KILLS
# (phase, rank) pairs a save goes through: the last three phases are rank 0's alone.
MOMENTS = [("before_engine_files", 0), ("before_engine_files", 1), ("after_engine_files", 0),
           ("after_engine_files", 1), ("before_commit", 0), ("after_rename", 0),
           ("between_trackers", 0)]


def _args(dataset, *extra):
    return tiny_gpt_args(dataset, train_iters=ITERATIONS,
                         extra=["--no-pipeline-parallel", "--eval-interval", "1000", *extra])


def _latest(directory) -> int:
    path = directory / "latest"
    return int(path.read_text().removeprefix("global_step")) if path.exists() else 0


def test_random_kills_during_saves_lose_nothing(dataset, tmp_path):
    reference_dir = tmp_path / "reference"
    reference = losses_by_iteration(run_pretrain(
        _args(dataset, "--save", str(reference_dir), "--save-interval", "1000"), num_procs=2))
    assert sorted(reference) == list(range(1, ITERATIONS + 1))

    rng = random.Random(SEED)
    directory = tmp_path / "checkpoints"
    args = _args(dataset, "--save", str(directory), "--save-interval", "1", "--load", str(directory))
    seen = {}
    for kill in range(KILLS):
        loaded = _latest(directory)
        target = min(loaded + rng.randint(1, 2), ITERATIONS - 1)
        phase, rank = rng.choice(MOMENTS)
        delay = rng.uniform(0.0, 0.25)
        process = _start(args, num_procs=2, env={"MARK_SAVES": "1"}, script=FAULT_ENTRY)
        try:
            output = _read_until(process, f"[rank {rank}] test hook: {phase} of global_step{target}")
            time.sleep(delay)
        finally:
            processes.kill_group(process)  # SIGKILL to every rank: no handler, no cleanup
        output += process.stdout.read()  # what it logged before the kill (a save follows its log line)
        where = f"kill {kill}: {phase} of step {target} on rank {rank} + {delay:.3f} s"
        if loaded:
            assert f"loaded checkpoint global_step{loaded}" in output, where
        stretch = losses_by_iteration(output)
        assert stretch == {i: reference[i] for i in stretch}, where
        assert min(stretch, default=loaded + 1) == loaded + 1, where
        seen.update(stretch)
        assert _latest(directory) >= max(loaded, target - 1), where  # saves every iteration
        assert _latest(directory) < ITERATIONS - 1, f"{where}: the sweep ran out of iterations"

    loaded = _latest(directory)
    last = run_pretrain(args, num_procs=2)
    assert f"loaded checkpoint global_step{loaded}" in last
    seen.update(losses_by_iteration(last))
    assert seen == reference
    assert (directory / "latest").read_text() == f"global_step{ITERATIONS}"
    assert not [p.name for p in directory.iterdir() if p.name.endswith((".saving", ".replaced"))]
    final, expected = _weights(directory / f"global_step{ITERATIONS}"), _weights(
        reference_dir / f"global_step{ITERATIONS}")
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (final[name] == tensor).all(), name
