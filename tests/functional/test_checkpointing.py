"""Checkpoints through the real program: exact resume, load options, refusals, crash safety,
exit conditions and SIGTERM.

The reference for "exact" is always an uninterrupted run of the same command: losses are
compared at every logged iteration (equality of the printed values) and the final weights
tensor by tensor (torch.equal), with dropout on (the default 0.1) in fp32 on CPU.
"""
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import torch

from tests import processes
from tests.functional.launch import (REPO_ROOT, losses_by_iteration, pretrain_command,
                                     run_pretrain, run_pretrain_refused, tiny_gpt_args,
                                     validation_results, write_random_dataset)

pytestmark = pytest.mark.slow

N = 3  # iterations before the stop; runs are 2N long
LAYOUTS = {
    "zero1": (1, ["--no-pipeline-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "dp2": (2, ["--no-pipeline-parallel"]),
}
_LR = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? learning rate: ([0-9.E+-]+) \|")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("ckpt-data") / "random_text_document")


def _args(dataset, *extra, iterations=2 * N):
    return tiny_gpt_args(dataset, train_iters=iterations, extra=["--eval-interval", str(N), *extra])


def _learning_rates(output):
    return {int(m.group(1)): float(m.group(2)) for m in _LR.finditer(output)}


def _weights(tag_dir: Path) -> dict:
    """Every model tensor of a checkpoint folder (ZeRO engine module or pipeline layer files)."""
    tensors = {}
    for path in sorted(tag_dir.glob("*model_states.pt")):
        content = torch.load(path, map_location="cpu", weights_only=False)
        module = content.get("module") if "module" in content else content
        for name, value in (module or {}).items():
            if torch.is_tensor(value):
                tensors[f"{path.name}:{name}"] = value
    return tensors


def _run_failing(args, *, num_procs=1):
    """Run pretrain_gpt.py expecting a non-zero exit; returns (exit code, output)."""
    code, _, output = run_pretrain_refused(args, num_procs=num_procs, timeout=300)
    return code, output


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_is_bit_identical(dataset, tmp_path, layout):
    procs, layout_args = LAYOUTS[layout]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = run_pretrain(_args(dataset, *layout_args, "--save", str(straight_dir),
                                  "--save-interval", "1000"), num_procs=procs)
    first = run_pretrain(_args(dataset, *layout_args, "--save", str(resumed_dir), "--save-interval",
                               str(N), "--exit-interval", str(N)), num_procs=procs)
    assert max(losses_by_iteration(first)) == N, "--exit-interval did not stop the run"
    assert (resumed_dir / "latest").read_text() == f"global_step{N}"
    assert (resumed_dir / "latest_checkpointed_iteration.txt").read_text() == str(N)
    second = run_pretrain(_args(dataset, *layout_args, "--save", str(resumed_dir), "--save-interval",
                                str(N), "--load", str(resumed_dir)), num_procs=procs)
    assert f"loaded checkpoint global_step{N}" in second
    assert min(losses_by_iteration(second)) == N + 1

    expected = losses_by_iteration(straight)
    resumed = {**losses_by_iteration(first), **losses_by_iteration(second)}
    assert sorted(expected) == list(range(1, 2 * N + 1))
    assert resumed == expected
    assert _learning_rates(first) | _learning_rates(second) == _learning_rates(straight)
    # The validation at iteration 2N sees the same weights and the same validation batches.
    assert validation_results(second)[0] == validation_results(straight)[1]

    final = f"global_step{2 * N}"
    straight_weights, resumed_weights = _weights(straight_dir / final), _weights(resumed_dir / final)
    assert straight_weights and straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


@pytest.fixture(scope="module")
def saved_run(dataset, tmp_path_factory):
    """One uninterrupted zero1 run saving at N and 2N: (directory, its output)."""
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    output = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--save", str(directory),
                                "--save-interval", str(N)))
    assert sorted(p.name for p in directory.glob("global_step*")) == [f"global_step{N}",
                                                                      f"global_step{2 * N}"]
    return directory, output


def _resume(dataset, saved_run, *extra, iterations=2 * N):
    directory, _ = saved_run
    return run_pretrain(_args(dataset, "--no-pipeline-parallel", "--load", str(directory),
                              "--load-tag", f"global_step{N}", *extra, iterations=iterations))


def test_load_tag_resumes_from_that_step(dataset, saved_run):
    output = _resume(dataset, saved_run)
    assert losses_by_iteration(output) == {
        i: loss for i, loss in losses_by_iteration(saved_run[1]).items() if i > N}


def test_no_load_optim_keeps_weights_but_restarts_adam(dataset, saved_run):
    output = _resume(dataset, saved_run, "--no-load-optim")
    straight, resumed = losses_by_iteration(saved_run[1]), losses_by_iteration(output)
    assert "optimizer state not loaded" in output
    assert resumed[N + 1] == straight[N + 1]          # same weights, data and dropout
    assert resumed[N + 2] != straight[N + 2]          # the update used fresh Adam moments
    assert _learning_rates(output)[N + 1] == _learning_rates(saved_run[1])[N + 1]


def test_no_load_rng_draws_other_dropout_masks(dataset, saved_run):
    output = _resume(dataset, saved_run, "--no-load-rng")
    assert losses_by_iteration(output)[N + 1] != losses_by_iteration(saved_run[1])[N + 1]


def test_finetune_loads_only_the_weights(dataset, saved_run):
    # Evaluation only: the weights of step N on the validation batches the saving run used at N.
    output = _resume(dataset, saved_run, "--finetune", "--skip-train")
    assert "--finetune" in output
    at_n = [r for r in validation_results(saved_run[1]) if r[0] == f"iteration {N}"][0]
    assert validation_results(output)[0][1:] == at_n[1:]
    # Training restarts at iteration 1 with a fresh schedule.
    output = _resume(dataset, saved_run, "--finetune")
    assert sorted(losses_by_iteration(output)) == list(range(1, 2 * N + 1))
    assert _learning_rates(output)[1] == _learning_rates(saved_run[1])[1]
    assert losses_by_iteration(output)[1] != losses_by_iteration(saved_run[1])[1]


def test_scheduler_flags_against_the_checkpoint(dataset, saved_run):
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(saved_run[0]),
                                      "--load-tag", f"global_step{N}", "--lr", "2e-3"))
    assert "--override-opt_param-scheduler" in output and "--use-checkpoint-opt_param-scheduler" in output
    kept = _resume(dataset, saved_run, "--lr", "2e-3", "--use-checkpoint-opt_param-scheduler")
    assert _learning_rates(kept)[N + 1] == _learning_rates(saved_run[1])[N + 1]
    overridden = _resume(dataset, saved_run, "--lr", "2e-3", "--override-opt_param-scheduler")
    fresh = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--lr", "2e-3"))
    assert _learning_rates(overridden)[N + 1] == _learning_rates(fresh)[N + 1]
    assert _learning_rates(overridden)[N + 1] != _learning_rates(saved_run[1])[N + 1]


@pytest.mark.parametrize("flags, procs, expected", [
    (["--hidden-size", "128"], 1, "--hidden-size: checkpoint 64, flags 128"),
    (["--num-layers", "3"], 1, "--num-layers: checkpoint 2, flags 3"),
    (["--vocab-size", "1000"], 1, "padded vocabulary size"),
    (["--num-attention-heads", "8"], 1, "--num-attention-heads: checkpoint 4, flags 8"),
], ids=["hidden", "layers", "vocab", "heads"])
def test_mismatching_checkpoint_is_refused(dataset, saved_run, flags, procs, expected):
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(saved_run[0]),
                                      *flags), num_procs=procs)
    assert code == 1
    assert "does not match the flags" in output and expected in output, output[-2000:]


def test_latest_pointing_at_a_missing_step_is_refused(dataset, saved_run, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(saved_run[0], directory)
    (directory / "latest").write_text("global_step9")
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(directory)))
    assert "global_step9" in output and "missing" in output
    assert f"newest intact checkpoint there is global_step{2 * N} (pass --load-tag global_step{2 * N})" in output


def test_partial_step_is_refused_naming_the_missing_file(dataset, saved_run, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(saved_run[0], directory)
    victim = directory / f"global_step{2 * N}" / "mp_rank_00_model_states.pt"
    victim.unlink()
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(directory)))
    assert str(victim) in output
    assert f"pass --load-tag global_step{N}" in output


def test_resaving_the_loaded_step_leaves_it_untouched(dataset, saved_run, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(saved_run[0], directory)
    step = directory / f"global_step{2 * N}"
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in step.iterdir()}
    # Loaded at 2N with nothing left to train: the final save must not rewrite it.
    run_pretrain(_args(dataset, "--no-pipeline-parallel", "--load", str(directory), "--save",
                       str(directory), "--save-interval", str(N)))
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in step.iterdir()} == before


def _start(args, *, num_procs=1, env=None, script=str(REPO_ROOT / "pretrain_gpt.py")):
    return processes.start(pretrain_command(num_procs=num_procs, script=script) + list(args), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                                    **(env or {})))


def _read_until(process, marker, *, timeout=240):
    """Lines of the process's output up to the first containing `marker`; kills its whole
    process group at the timeout or when the output ends without the marker."""
    lines = []
    watchdog = threading.Timer(timeout, processes.kill_group, args=(process,))
    watchdog.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                return "".join(lines)
    finally:
        watchdog.cancel()
    processes.kill_group(process)
    raise AssertionError(f"never saw {marker!r}:\n{''.join(lines)[-3000:]}")


def test_kill_during_a_save_keeps_the_previous_checkpoint(dataset, saved_run, tmp_path):
    directory = tmp_path / "crash"
    process = _start(_args(dataset, "--no-pipeline-parallel", "--save", str(directory),
                           "--save-interval", str(N)),
                     env={"STALL_IN_SAVE": f"after_engine_files:{2 * N}:300"},
                     script=str(Path(__file__).parent / "fault_entry.py"))
    try:
        _read_until(process, f"stalling 300 s at after_engine_files of global_step{2 * N}")
    finally:
        processes.kill_group(process)  # SIGKILL: no handler, no cleanup
    assert (directory / "latest").read_text() == f"global_step{N}"
    assert (directory / "latest_checkpointed_iteration.txt").read_text() == str(N)
    assert not (directory / f"global_step{2 * N}").exists()
    assert (directory / f"global_step{2 * N}.saving").is_dir()
    resumed = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--load", str(directory),
                                 "--save", str(directory), "--save-interval", str(N)))
    assert losses_by_iteration(resumed) == {
        i: loss for i, loss in losses_by_iteration(saved_run[1]).items() if i > N}
    assert (directory / "latest").read_text() == f"global_step{2 * N}"
    assert not (directory / f"global_step{2 * N}.saving").exists()


def test_sigterm_to_one_rank_saves_and_every_rank_exits_0(dataset, tmp_path):
    directory = tmp_path / "signal"
    process = _start(_args(dataset, "--no-pipeline-parallel", "--exit-signal-handler", "--save",
                           str(directory), "--save-interval", "1000", iterations=500),
                     num_procs=2)
    try:
        output = _read_until(process, "iteration        2/")
        ranks = [child for child in psutil.Process(process.pid).children(recursive=False)
                 if "pretrain_gpt.py" in " ".join(child.cmdline())]
        assert len(ranks) == 2
        ranks[0].send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        output += rest
    finally:
        processes.kill_group(process)
    assert process.returncode == 0, output[-3000:]
    assert "received SIGTERM (--exit-signal-handler)" in output
    last = max(losses_by_iteration(output))
    assert 2 <= last < 500
    assert (directory / "latest").read_text() == f"global_step{last}"
    assert (directory / f"global_step{last}" / "rng_state_rank_00001.pt").is_file()


def test_exit_duration_stops_and_saves(dataset, tmp_path):
    directory = tmp_path / "duration"
    output = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--exit-duration-in-mins",
                                "0.001", "--save", str(directory), "--save-interval", "1000",
                                iterations=500))
    assert "--exit-duration-in-mins 0.001" in output
    last = max(losses_by_iteration(output))
    assert last < 500
    assert (directory / "latest").read_text() == f"global_step{last}"


def test_no_save_optim_and_no_save_rng(dataset, tmp_path):
    directory = tmp_path / "lean"
    run_pretrain(_args(dataset, "--no-pipeline-parallel", "--save", str(directory), "--save-interval",
                       str(N), "--exit-interval", str(N), "--no-save-optim", "--no-save-rng"))
    step = directory / f"global_step{N}"
    names = sorted(p.name for p in step.iterdir())
    assert not [name for name in names if "optim_states" in name], names
    assert not [name for name in names if name.startswith("rng_state")], names
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(directory)))
    assert "saved with --no-save-optim; pass --no-load-optim or --finetune" in output
    resumed = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--load", str(directory),
                                 "--no-load-optim"))
    assert "has no random states for this layout" in resumed
    assert min(losses_by_iteration(resumed)) == N + 1


def test_missing_checkpoint_starts_afresh_or_fails_when_asked(dataset, tmp_path):
    empty = tmp_path / "empty"
    output = run_pretrain(_args(dataset, "--no-pipeline-parallel", "--load", str(empty)))
    assert "no checkpoint found" in output and min(losses_by_iteration(output)) == 1
    code, output = _run_failing(_args(dataset, "--no-pipeline-parallel", "--load", str(empty),
                                      "--exit-on-missing-checkpoint"))
    assert code == 1 and "no checkpoint found" in output and "--exit-on-missing-checkpoint" in output
