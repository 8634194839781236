"""Non-finite losses under the pipeline engine (PP2, two processes): the step is skipped on both
stages and counted, it changes no weight and no optimizer state (tensors compared), and
`--max-consecutive-nonfinite-iterations` stops the run on every rank.

The NaN is injected into the last stage's loss function (tests/functional/nonfinite_entry.py);
the first stage only sees it as NaN gradients coming back, as it would in a diverging run.
"""
import pytest

from tests.functional.launch import write_random_dataset
from tests.functional.training_state import (assert_skipped_step_changed_nothing,
                                             run_with_injected_nan, saved_training_state)

pytestmark = pytest.mark.slow

PIPELINE_2 = ["--pipeline-model-parallel-size", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("random") / "random_text_document")


def _iteration_lines(output: str) -> dict:
    return {int(line.split("/")[0].split()[-1]): line for line in output.splitlines()
            if line.startswith(" iteration ")}


@pytest.mark.parametrize("precision", [["--zero-stage", "0"], ["--zero-stage", "1"], ["--bf16"]],
                         ids=["fp32-zero0", "fp32-zero1", "bf16-zero1"])
def test_skipped_step_leaves_both_stages_bit_identical(dataset, tmp_path, precision):
    """At ZeRO stage 0 in fp32 only the project's step guard protects the weights (DeepSpeed
    hands the gradients to the optimizer as they are); ZeRO-1 and the bf16 optimizer also
    check the gradient norm themselves."""
    save = tmp_path / "save"
    completed = run_with_injected_nan(
        dataset, 4, "3", num_procs=2,
        extra=[*PIPELINE_2, "--save", str(save), "--save-interval", "1", *precision])
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    lines = _iteration_lines(completed.stdout)
    assert "number of nan iterations:   1" in lines[3]
    assert "number of skipped iterations:   1" in lines[3]
    assert "number of skipped iterations:   0" in lines[4]
    # Both stages' layers and optimizer shards are in the comparison.
    names = saved_training_state(save, 2)
    files = {kind: {name.split("/")[1].partition(".pt")[0] + ".pt"
                    for name in names if name.startswith(f"{kind}/")} for kind in ("module", "optimizer")}
    assert files["module"] >= {
        "layer_01-model_00-model_states.pt", "layer_04-model_00-model_states.pt"}, sorted(names)
    assert len(files["optimizer"]) == 2, sorted(names)
    assert_skipped_step_changed_nothing(save, skipped=3)


def test_persistent_nonfinite_loss_stops_every_rank(dataset):
    completed = run_with_injected_nan(dataset, 20, "4-20", num_procs=2,
                                      extra=[*PIPELINE_2, "--max-consecutive-nonfinite-iterations", "3"])
    assert completed.returncode != 0
    stops = [line for line in completed.stderr.splitlines()
             if "non-finite for 3 consecutive iterations (up to iteration 6)" in line]
    assert len(stops) == 2, completed.stderr[-4000:]  # one line per rank
    assert " iteration        7/" not in completed.stdout
