"""Tensorboard switches through the real program: each writes its scalars at
--tensorboard-log-interval, and the off-switches leave theirs out; --profile writes a
torch.profiler trace of the chosen steps for the chosen rank into the same folder."""
import gzip
import json
import math

import pytest

from tests.functional.launch import run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow


def _scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_switches(tmp_path):
    dataset = write_random_dataset(tmp_path / "random_text_document")
    run_pretrain(tiny_gpt_args(dataset, train_iters=4, extra=[
        "--pipeline-model-parallel-size", "2", "--tensorboard-dir", str(tmp_path / "tb"),
        "--tensorboard-log-interval", "2", "--log-optimizer-states-to-tensorboard",
        "--log-memory-to-tensorboard", "--log-world-size-to-tensorboard",
        "--log-batch-size-to-tensorboard", "--log-timers-to-tensorboard",
        "--no-log-learnig-rate-to-tensorboard", "--profile", "pt", "--profile_steps", "2,3",
        "--profile-ranks", "1"]), num_procs=2)
    traces = sorted(path.name for path in (tmp_path / "tb").glob("*.pt.trace.json.gz"))
    assert len(traces) == 1 and traces[0].startswith("rank1."), traces
    with gzip.open(tmp_path / "tb" / traces[0]) as handle:
        events = json.load(handle)["traceEvents"]
    steps = {event["name"] for event in events if event.get("name", "").startswith("ProfilerStep")}
    assert len(steps) == 2, steps  # steps 2 and 3
    assert any("aten::" in event.get("name", "") for event in events)
    scalars = _scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["lm-loss-training/lm loss"]] == [2, 4]
    assert scalars["world-size/world-size"] == [(2, 2.0), (4, 2.0)]
    assert scalars["batch-size/batch-size"] == [(2, 8.0), (4, 8.0)]
    assert "learning-rate/learning-rate" not in scalars
    for tag in ("optimizer/momentum_l2", "optimizer/variance_l2", "optimizer/weight_l2",
                "optimizer/weight_abs_max", "mem-allocated-bytes", "iteration-time/iteration-time"):
        assert [step for step, _ in scalars[tag]] == [2, 4], tag
        assert all(math.isfinite(value) and value > 0 for _, value in scalars[tag]), tag
    # Adam's first moment keeps growing from zero over the first steps.
    momentum = [value for _, value in scalars["optimizer/momentum_l2"]]
    assert momentum[1] != momentum[0]
