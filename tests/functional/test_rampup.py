"""--rampup-batch-size in whole runs: the global batch grows as upstream's formula says, the
engine really takes that many micro batches, and the samples add up to --train-samples."""
import re

import pytest

from tests.functional.launch import losses_by_iteration, run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow

_BATCH = re.compile(r"iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\d+) \|.*? global batch size:\s+(\d+) \|")
LAYOUTS = {"zero1": (1, ["--no-pipeline-parallel"]), "pp2": (2, ["--pipeline-model-parallel-size", "2"])}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("rampup") / "random_text_document")


def _sample_args(dataset, layout, global_batch_size, extra):
    args = tiny_gpt_args(dataset, train_iters=1, global_batch_size=global_batch_size,
                         extra=[*LAYOUTS[layout][1], *extra])
    for flag in ("--train-iters", "--lr-warmup-iters"):
        position = args.index(flag)
        del args[position:position + 2]
    return args + ["--lr-warmup-samples", "8"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rampup_grows_the_batch(dataset, layout):
    procs = LAYOUTS[layout][0]
    # Start 4, +4 every 16 samples up to 8; 40 samples = 4 x 4 + 3 x 8 = 7 iterations.
    output = run_pretrain(_sample_args(dataset, layout, 8, ["--train-samples", "40",
                                                            "--rampup-batch-size", "4", "4", "16"]),
                          num_procs=procs)
    rows = [(int(i), int(consumed), int(batch)) for i, consumed, batch in _BATCH.findall(output)]
    assert [batch for _, _, batch in rows] == [4, 4, 4, 4, 8, 8, 8]
    assert [consumed for _, consumed, _ in rows] == [4, 8, 12, 16, 24, 32, 40]
    # Iteration 1 ran 2 micro batches of 2: the same first step as a constant batch of 4.
    constant = run_pretrain(_sample_args(dataset, layout, 4, ["--train-samples", "40"]),
                            num_procs=procs)
    assert losses_by_iteration(output)[1] == losses_by_iteration(constant)[1]
