"""Activation recompute in whole training runs with dropout on (the default 0.1), fp32 CPU.

The recomputed forward replays the same operations under the restored RNG states, so the
losses of every iteration must equal the plain run's exactly — with the ZeRO engine and
inside DeepSpeed's pipeline engine (PP2). (That recompute really happens is checked in
tests/dist/model/test_recompute.py and test_gpt_model_pipe_engine.py.)
"""
import pytest

from tests.functional.launch import losses_by_iteration, run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow

ITERATIONS = 4
MODES = {
    "legacy": ["--checkpoint-activations"],
    "deepspeed-partition-cpu": ["--checkpoint-activations", "--deepspeed-activation-checkpointing",
                                "--partition-activations", "--checkpoint-in-cpu"],
    "selective": ["--recompute-granularity", "selective"],
    "full-block": ["--recompute-granularity", "full", "--recompute-method", "block",
                   "--recompute-num-layers", "1"],
}
LAYOUTS = {"zero1": (1, ["--no-pipeline-parallel"]), "pp2": (2, ["--pipeline-model-parallel-size", "2"])}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("recompute") / "random_text_document")


_PLAIN = {}


def _losses(dataset, layout, extra):
    procs, layout_args = LAYOUTS[layout]
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=ITERATIONS,
                                        extra=[*layout_args, *extra]), num_procs=procs)
    return losses_by_iteration(output), output


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_recompute_leaves_training_unchanged(dataset, layout, mode):
    if layout not in _PLAIN:
        _PLAIN[layout] = _losses(dataset, layout, [])[0]
    losses, _ = _losses(dataset, layout, MODES[mode])
    assert sorted(losses) == list(range(1, ITERATIONS + 1))
    assert losses == _PLAIN[layout]


def test_checkpoint_in_cpu_without_partitioning_says_what_it_does_on_a_cpu(dataset):
    losses, output = _losses(dataset, "zero1", ["--checkpoint-activations",
                                                "--deepspeed-activation-checkpointing",
                                                "--checkpoint-in-cpu"])
    assert "--checkpoint-in-cpu: on a CPU-only run" in output
    if "zero1" not in _PLAIN:
        _PLAIN["zero1"] = _losses(dataset, "zero1", [])[0]
    assert losses == _PLAIN["zero1"]
