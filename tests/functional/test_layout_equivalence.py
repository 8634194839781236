"""Every parallel layout trains the same model: the first 10 losses agree with one process.

fp32, dropout off, layout-independent initialization (--use-cpu-initialization) and a
vocabulary whose padded size is 512 for every TP used. Tolerance: 1e-4 relative (the layouts
differ only in the order of floating-point reductions; log lines carry 7 significant digits).
"""
import pytest

from tests.functional.launch import losses_by_iteration, run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow
ITERATIONS = 10
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("layout") / "random_text_document")


@pytest.fixture(scope="module")
def reference_losses(dataset):
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=ITERATIONS,
                                        extra=NO_DROPOUT + ["--no-pipeline-parallel"]))
    losses = losses_by_iteration(output)
    assert sorted(losses) == list(range(1, ITERATIONS + 1)), output[-3000:]
    return losses


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--no-pipeline-parallel"], "deepspeed"),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                  "--no-pipeline-parallel"], "torchrun"),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"], "deepspeed"),
    "dp2-zero1": (2, ["--no-pipeline-parallel"], "torchrun"),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
                "torchrun"),
    "tp2-pp2-sequence-parallel": (4, ["--tensor-model-parallel-size", "2",
                                      "--pipeline-model-parallel-size", "2", "--sequence-parallel"],
                                  "torchrun"),
    "tp2-pp2-dp2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
                    "torchrun"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, dataset, reference_losses):
    num_procs, flags, launcher = LAYOUTS[layout]
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=ITERATIONS, extra=NO_DROPOUT + flags),
                          num_procs=num_procs, launcher=launcher, timeout=600)
    losses = losses_by_iteration(output)
    assert sorted(losses) == list(range(1, ITERATIONS + 1)), output[-3000:]
    for iteration, reference in reference_losses.items():
        assert losses[iteration] == pytest.approx(reference, rel=1e-4), (
            f"{layout}: iteration {iteration}: {losses[iteration]} vs 1-process {reference}")
