"""--rampup-batch-size in whole runs: the engine really takes the growing number of micro
batches from the data (counted at the iterator, consumption_entry.py), the log line reports
it as upstream's formula says, and the samples add up to --train-samples."""
import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.functional.consumption_entry import MARKER
from tests.functional.launch import (losses_by_iteration, run_pretrain, tiny_gpt_args,
                                     write_random_dataset)

pytestmark = pytest.mark.slow

_BATCH = re.compile(r"iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\d+) \|"
                    r".*? global batch size:\s+(\d+) \|")
_CONSUMED = re.compile(re.escape(MARKER)
                       + r" rank (\d+) iteration (\d+) micro batches (\d+) samples (\d+)")
_ENTRY = Path(__file__).with_name("consumption_entry.py")
# ranks, flags, ranks that read data (TP rank 0 of every stage: the pipeline's first stage
# for the inputs, its last for the labels)
LAYOUTS = {"zero1": (1, ["--no-pipeline-parallel"], [0]),
           "pp2": (2, ["--pipeline-model-parallel-size", "2"], [0, 1])}


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


def _consumed(output):
    """rank -> [(micro batches, samples) of iteration 1, 2, ...] as the engine pulled them."""
    by_rank = defaultdict(dict)
    for rank, iteration, micro_batches, samples in _CONSUMED.findall(output):
        by_rank[int(rank)][int(iteration)] = (int(micro_batches), int(samples))
    return {rank: [rows[i] for i in sorted(rows)] for rank, rows in by_rank.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rampup_grows_the_batch(dataset, layout):
    procs, _, data_ranks = LAYOUTS[layout]
    # Start 4, +4 every 16 samples up to 8; 40 samples = 4 x 4 + 3 x 8 = 7 iterations.
    output = run_pretrain(_sample_args(dataset, layout, 8, ["--train-samples", "40",
                                                            "--rampup-batch-size", "4", "4", "16"]),
                          num_procs=procs, script=_ENTRY)
    # Micro batches of 2 samples, one data-parallel rank: 2 micro batches per step while the
    # global batch is 4, then 4.
    expected = [(2, 4)] * 4 + [(4, 8)] * 3
    consumed = _consumed(output)
    assert sorted(consumed) == data_ranks, output[-3000:]
    for rank in data_ranks:
        assert consumed[rank] == expected, f"rank {rank} pulled {consumed[rank]}"
        assert sum(samples for _, samples in consumed[rank]) == 40
    rows = [(int(i), int(samples), int(batch)) for i, samples, batch in _BATCH.findall(output)]
    assert [batch for _, _, batch in rows] == [4, 4, 4, 4, 8, 8, 8]
    assert [samples for _, samples, _ in rows] == [4, 8, 12, 16, 24, 32, 40]
    # Iteration 1 ran 2 micro batches of 2: the same first step as a constant batch of 4.
    constant = run_pretrain(_sample_args(dataset, layout, 4, ["--train-samples", "40"]),
                            num_procs=procs)
    assert losses_by_iteration(output)[1] == losses_by_iteration(constant)[1]
