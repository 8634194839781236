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


def _wandb_records(run_file):
    """The Record protobufs of a wandb run file. The framing is LevelDB's log format, which
    wandb uses: a 7-byte file header (":W&B", magic, version), 32 KiB blocks, and chunks with
    a 7-byte header (CRC-32C, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, block = 7, b"", 32768
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_has_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    dataset = write_random_dataset(tmp_path / "random_text_document")
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=4, extra=[
        "--wandb-project", "megatron-test", "--wandb-exp-name", "tiny",
        "--wandb-save-dir", str(tmp_path / "wb"), "--eval-interval", "2", "--eval-iters", "1"]))
    from tests.functional.launch import losses_by_iteration, validation_results

    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = {}, {}
    for record in _wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            history[record.history.step.num] = items
        elif record.WhichOneof("record_type") == "run":  # the run's start, with its config
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    losses = losses_by_iteration(output)
    assert sorted(losses) == [1, 2, 3, 4]
    for iteration, loss in losses.items():
        assert history[iteration]["lm-loss-training/lm loss"] == pytest.approx(loss, rel=1e-6)
        assert "learning-rate/learning-rate" in history[iteration]
    # A scalar against samples goes on its own axis, logged at the iteration's step.
    assert [history[i]["samples"] for i in (1, 2, 3, 4)] == [8, 16, 24, 32]
    validation = [loss for _, loss, _ in validation_results(output)]
    assert history[2]["lm-loss-validation/lm loss validation"] == pytest.approx(validation[0],
                                                                                 rel=1e-6)
    assert config["num_layers"] == 2 and config["wandb_project"] == "megatron-test"
