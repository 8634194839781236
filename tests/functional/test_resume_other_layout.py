"""A checkpoint saved on one TP x PP x DP layout (or by the other engine) resumes on another,
and the run continues as if it had never stopped: the losses of iterations N+1..2N and the
final weights equal those of one uninterrupted single-process run.

fp32, dropout off, layout-independent initialization; the layouts differ only in the order
of floating-point reductions (tests/functional/test_layout_equivalence.py). Tolerances are
that test's: losses 1e-4 relative (7 printed digits) [measured: equal in every printed
digit], weights 1e-6 absolute and the key part of the QKV bias 1e-5. That the optimizer state
is really carried over is shown by --no-load-optim, whose continuation differs. bf16: the
resumed run against the uninterrupted run on the source layout, within 2e-2 relative (bf16
rounding differs between layouts).
"""
import pytest

from tests.functional.launch import (losses_by_iteration, run_pretrain, run_pretrain_refused,
                                     tiny_gpt_args, write_random_dataset)
from tests.functional.test_layout_equivalence import LOSS_RTOL, assert_same_weights, merged_weights

pytestmark = pytest.mark.slow
N = 3
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
ZERO_ENGINE = ["--no-pipeline-parallel"]
TP2_PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("other_layout") / "random_text_document")


def _run(dataset, flags, procs, *, save=None, load=None, stop_at=None):
    extra = [*NO_DROPOUT, *flags]
    if save is not None:
        extra += ["--save", str(save), "--save-interval", str(N)]
    if load is not None:
        extra += ["--load", str(load)]
    if stop_at is not None:
        extra += ["--exit-interval", str(stop_at)]
    return run_pretrain(tiny_gpt_args(dataset, train_iters=2 * N, extra=extra), num_procs=procs,
                        timeout=600)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    save = tmp_path_factory.mktemp("reference")
    output = _run(dataset, ZERO_ENGINE, 1, save=save)
    return losses_by_iteration(output), merged_weights(save)


PAIRS = {
    "tp2-pp2 to tp1": ((TP2_PP2, 4), (ZERO_ENGINE, 1)),
    "pp2 to tp2 zero engine": ((["--pipeline-model-parallel-size", "2"], 2),
                               (["--tensor-model-parallel-size", "2", *ZERO_ENGINE], 2)),
    "dp2 to dp1": ((ZERO_ENGINE, 2), (ZERO_ENGINE, 1)),
    "tp1 to tp2 x dp2": ((ZERO_ENGINE, 1), (["--tensor-model-parallel-size", "2", *ZERO_ENGINE], 4)),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_resume_on_another_layout_continues_the_run(pair, dataset, reference, tmp_path):
    (source, source_procs), (target, target_procs) = PAIRS[pair]
    _run(dataset, source, source_procs, save=tmp_path / "saved", stop_at=N)
    output = _run(dataset, target, target_procs, load=tmp_path / "saved",
                  save=tmp_path / "resumed")
    assert "resuming on TP" in output and "re-splitting its weights and optimizer state" in output
    assert "random states cannot carry over" in output
    losses, (ref_losses, ref_weights) = losses_by_iteration(output), reference
    assert sorted(losses) == list(range(N + 1, 2 * N + 1)), output[-3000:]
    for iteration in losses:
        assert losses[iteration] == pytest.approx(ref_losses[iteration], rel=LOSS_RTOL), (
            f"{pair}: iteration {iteration}: {losses[iteration]} vs {ref_losses[iteration]}")
    assert_same_weights(merged_weights(tmp_path / "resumed"), ref_weights, pair)


def test_the_optimizer_state_is_carried_over(dataset, reference, tmp_path):
    _run(dataset, TP2_PP2, 4, save=tmp_path / "saved", stop_at=N)
    output = _run(dataset, [*ZERO_ENGINE, "--no-load-optim"], 1, load=tmp_path / "saved")
    assert "re-splitting its weights\n" in output
    losses, ref_losses = losses_by_iteration(output), reference[0]
    # The weights after iteration N are the same, so is the loss of N+1; fresh Adam moments
    # then take another step.
    assert losses[N + 1] == pytest.approx(ref_losses[N + 1], rel=LOSS_RTOL)
    assert abs(losses[N + 2] - ref_losses[N + 2]) > 10 * LOSS_RTOL * ref_losses[N + 2]  # [0.19%]
    # A layout the model cannot take stops every rank at start-up, before reading or writing.
    before = sorted(path.name for path in (tmp_path / "saved").rglob("*"))
    code, errors, output = run_pretrain_refused(tiny_gpt_args(dataset, train_iters=2 * N, extra=[
        *NO_DROPOUT, "--pipeline-model-parallel-size", "4", "--load", str(tmp_path / "saved"),
        "--save", str(tmp_path / "saved"), "--save-interval", str(N)]), num_procs=4)
    # torchrun stops the other ranks as soon as one exits, so some may be stopped before they
    # print (tests/functional/test_bad_inputs.py starts ranks directly to see every line).
    assert code != 0 and 1 <= len(errors) <= 4, output[-2000:]
    assert all("must be divisible by --pipeline-model-parallel-size 4" in line
               for line in errors), output[-2000:]
    assert sorted(path.name for path in (tmp_path / "saved").rglob("*")) == before


def test_bf16_resumes_on_another_layout(dataset, tmp_path):
    bf16 = ["--bf16", *ZERO_ENGINE]
    straight = losses_by_iteration(_run(dataset, ["--tensor-model-parallel-size", "2", *bf16], 2,
                                        save=tmp_path / "saved", stop_at=None))
    resumed = losses_by_iteration(_run(dataset, [*bf16, "--load-tag", f"global_step{N}"], 1,
                                       load=tmp_path / "saved"))
    assert sorted(resumed) == list(range(N + 1, 2 * N + 1))
    for iteration in resumed:
        assert resumed[iteration] == pytest.approx(straight[iteration], rel=2e-2)
