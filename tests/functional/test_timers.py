"""--timing-log-level / --timing-log-option: upstream's timer block after each log line."""
import re

import pytest

from megatron.training.timers import format_timers
from tests.functional.launch import run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow
_MINMAX = re.compile(r"^    (\S+) \.+: \(([0-9.]+), ([0-9.]+)\)$", re.M)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("timers") / "random_text_document")


def test_level_2_minmax_on_the_zero_engine(dataset):
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=4, extra=[
        "--no-pipeline-parallel", "--log-interval", "2", "--timing-log-level", "2"]))
    assert output.count("(min, max) time across ranks (ms):") == 2
    rows = _MINMAX.findall(output)
    assert {name for name, _, _ in rows} == {"forward-backward", "forward-compute",
                                             "backward-compute", "optimizer"}
    for name, low, high in rows:
        assert 0 < float(low) <= float(high), name
    times = {name: float(low) for name, low, _ in rows[:4]}
    # forward-backward contains its two parts.
    assert times["forward-backward"] >= times["forward-compute"] + times["backward-compute"] - 1.0


def test_level_1_all_ranks_on_the_pipeline_engine(dataset):
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=2, extra=[
        "--pipeline-model-parallel-size", "2", "--log-interval", "2", "--lr-warmup-iters", "1",
        "--timing-log-level", "1", "--timing-log-option", "all"]), num_procs=2)
    block = output[output.index("times across ranks (ms):"):]
    assert re.search(r"\n  forward-backward:\n     rank  0: [0-9.]+\n     rank  1: [0-9.]+", block)
    assert "forward-compute" not in output


def test_level_0_prints_no_timers(dataset):
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=3, extra=["--no-pipeline-parallel"]))
    assert "time across ranks" not in output


def test_format_skips_timers_no_rank_ran():
    text = format_timers(["a", "b"], [[1.0, -1.0], [3.0, -1.0]], "max")
    assert text == "(max) time across ranks (ms):\n    " + "a ".ljust(48, ".") + ": 3.00"
