"""pretrain_gpt.py with DeepSpeed-Ulysses sequence parallelism (--ds-sequence-parallel-size)
trains the same model as one process, saves and resumes, and refuses what it cannot do.

fp32, dropout off, layout-independent initialization, ZeRO-1 (partitioned over the
sequence x data-parallel ranks). The runs differ from the 1-process run only in the order
of floating-point reductions. Tolerances (measured on this machine in brackets):
- loss, every iteration: 1e-4 relative (log lines carry 7 significant digits) [< 1e-6].
- grad norm: 1.5e-3 absolute (printed with 3 decimals) [0 or 1e-3]; gradients summed over
  the sequence-parallel ranks without the whole-sequence loss scaling would double it.
- final weights: 1e-6 absolute (1e-5 for the key part of the QKV bias, whose true gradient
  is 0), as in test_layout_equivalence.py.
"""
from pathlib import Path

import pytest

from tests.functional.launch import (field_by_iteration, losses_by_iteration, run_pretrain,
                                     run_pretrain_refused, tiny_gpt_args, write_random_dataset)
from tests.functional.test_layout_equivalence import assert_same_weights, merged_weights

pytestmark = pytest.mark.slow
ITERATIONS = 6
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
LOSS_RTOL = 1e-4
GRAD_NORM_ATOL = 1.5e-3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("ulysses") / "random_text_document")


def _train(dataset, save_dir: Path, flags, *, num_procs: int = 1, iterations: int = ITERATIONS,
           extra=()):
    output = run_pretrain(
        tiny_gpt_args(dataset, train_iters=iterations,
                      extra=[*NO_DROPOUT, "--no-pipeline-parallel", *flags, "--save",
                             str(save_dir), "--save-interval", str(iterations), *extra]),
        num_procs=num_procs, timeout=300)
    return output


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("reference")
    output = _train(dataset, save_dir, [])
    assert sorted(losses_by_iteration(output)) == list(range(1, ITERATIONS + 1)), output[-3000:]
    return output, merged_weights(save_dir)


def _assert_same_training(output, ref_output, label, iterations=range(1, ITERATIONS + 1), *,
                          grad_norm: bool = True):
    losses, ref_losses = losses_by_iteration(output), losses_by_iteration(ref_output)
    norms, ref_norms = (field_by_iteration(output, "grad norm"),
                        field_by_iteration(ref_output, "grad norm"))
    for iteration in iterations:
        assert losses.get(iteration) == pytest.approx(ref_losses[iteration], rel=LOSS_RTOL), (
            f"{label}: iteration {iteration}: loss {losses.get(iteration)} vs 1-process "
            f"{ref_losses[iteration]}")
        assert not grad_norm or norms.get(iteration) == pytest.approx(ref_norms[iteration], abs=GRAD_NORM_ATOL), (
            f"{label}: iteration {iteration}: grad norm {norms.get(iteration)} vs 1-process "
            f"{ref_norms[iteration]}")


LAYOUTS = {
    "sp2": (2, ["--ds-sequence-parallel-size", "2"]),
    "sp2-dp2": (4, ["--ds-sequence-parallel-size", "2"]),
    # Without ZeRO DeepSpeed reduces gradients in its engine, not in the ZeRO optimizer (and
    # reports no grad norm: only its ZeRO and bf16 optimizer wrappers compute one).
    "sp2-zero0": (2, ["--ds-sequence-parallel-size", "2", "--zero-stage", "0"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ulysses_matches_single_process(layout, dataset, reference, tmp_path):
    num_procs, flags = LAYOUTS[layout]
    output = _train(dataset, tmp_path / "save", flags, num_procs=num_procs)
    ref_output, ref_weights = reference
    data_parallel = num_procs // 2
    assert f"x data parallel {data_parallel} x DeepSpeed-Ulysses sequence parallel 2" in output
    _assert_same_training(output, ref_output, layout, grad_norm=layout != "sp2-zero0")
    assert_same_weights(merged_weights(tmp_path / "save"), ref_weights, layout)


def test_ulysses_resumes_like_an_uninterrupted_run(dataset, reference, tmp_path):
    """Stop SP2 x DP1 at iteration 3 (--exit-interval saves first), resume on SP2 and on one
    process (the same weights, ZeRO files merged like data-parallel ones): iterations 4-6
    match the 1-process run."""
    flags = ["--ds-sequence-parallel-size", "2"]
    save = tmp_path / "save"
    _train(dataset, save, flags, num_procs=2, extra=["--exit-interval", "3"])
    output = run_pretrain(
        tiny_gpt_args(dataset, train_iters=ITERATIONS,
                      extra=[*NO_DROPOUT, "--no-pipeline-parallel", *flags, "--load", str(save)]),
        num_procs=2, timeout=300)
    assert sorted(losses_by_iteration(output)) == [4, 5, 6], output[-3000:]
    _assert_same_training(output, reference[0], "resumed sp2", iterations=(4, 5, 6))
    output = run_pretrain(
        tiny_gpt_args(dataset, train_iters=ITERATIONS,
                      extra=[*NO_DROPOUT, "--no-pipeline-parallel", "--load", str(save)]),
        timeout=300)
    assert sorted(losses_by_iteration(output)) == [4, 5, 6], output[-3000:]
    _assert_same_training(output, reference[0], "sp2 resumed on 1 process", iterations=(4, 5, 6))


REFUSALS = {
    "pipeline engine": (2, ["--ds-sequence-parallel-size", "2"],
                        "--ds-sequence-parallel-size 2 needs --no-pipeline-parallel"),
    "tensor parallel": (4, ["--ds-sequence-parallel-size", "2", "--tensor-model-parallel-size",
                            "2", "--no-pipeline-parallel"],
                        "--ds-sequence-parallel-size 2 needs --no-pipeline-parallel, "
                        "--tensor-model-parallel-size 1"),
}
# The shape refusals (heads, sequence length, world size) are unit-tested in
# tests/unit/config/test_ulysses_flags.py.


@pytest.mark.parametrize("case", list(REFUSALS))
def test_ulysses_refusals_name_the_flags(case, dataset):
    num_procs, flags, message = REFUSALS[case]
    code, errors, output = run_pretrain_refused(
        tiny_gpt_args(dataset, train_iters=1, extra=flags), num_procs=num_procs)
    assert code in (1, 2), output[-3000:]
    # One line per rank that got to say it (torchrun stops the others after the first exit).
    assert 1 <= len(errors) <= num_procs, output[-3000:]
    assert all(message in line for line in errors), errors
