"""Whole-program training runs: learning on real text, evaluation lines, non-finite losses."""
import re
import sys

import pytest
import torch

from tests import processes
from tests.functional.launch import (REPO_ROOT, losses_by_iteration, run_pretrain, tiny_gpt_args,
                                     validation_results, write_random_dataset)
from tests.functional.training_state import (assert_skipped_step_changed_nothing,
                                             run_with_injected_nan, saved_training_state)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    """The demo corpus (Python standard library text) with its own SentencePiece model."""
    directory = tmp_path_factory.mktemp("demo")
    python = sys.executable
    processes.run([python, str(REPO_ROOT / "tools/build_demo_corpus.py"), "--output",
                   str(directory / "corpus.jsonl"), "--max-mb", "2", "--sentencepiece-prefix",
                   str(directory / "spm"), "--vocab-size", "2048"], check=True,
                  capture_output=True, timeout=300)
    processes.run([python, str(REPO_ROOT / "tools/preprocess_data.py"), "--input",
                   str(directory / "corpus.jsonl"), "--output-prefix", str(directory / "demo"),
                   "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
                   str(directory / "spm.model"), "--append-eod", "--workers", "1"],
                  check=True, capture_output=True, timeout=300)
    return str(directory / "demo_text_document"), str(directory / "spm.model")


def _text_args(data_prefix, tokenizer_args, *, iterations, extra=()):
    args = tiny_gpt_args(data_prefix, train_iters=iterations, extra=extra)
    # Replace the NullTokenizer of the synthetic-data defaults with a real tokenizer.
    position = args.index("--tokenizer-type")
    del args[position:position + 4]
    return args + list(tokenizer_args) + ["--lr", "3e-3", "--log-interval", "5"]


def _assert_learns(losses):
    iterations = sorted(losses)
    assert iterations[-1] == 50, losses
    first, last = losses[iterations[0]], losses[iterations[-1]]
    # A model that learns nothing stays near ln(vocab); this one must gain at least 1 nat.
    assert last < first - 1.0, f"loss went from {first} to {last}"


@pytest.mark.parametrize("precision", [[], ["--bf16"]], ids=["fp32", "bf16"])
def test_loss_decreases_on_demo_corpus(demo_dataset, precision):
    prefix, model = demo_dataset
    output = run_pretrain(_text_args(prefix, ["--tokenizer-type", "GPTSentencePieceTokenizer",
                                              "--tokenizer-model", model], iterations=50,
                                     extra=["--no-pipeline-parallel", *precision]))
    _assert_learns(losses_by_iteration(output))


def test_loss_decreases_on_reference_corpus_with_gpt2_bpe(shared_data, tmp_path):
    processes.run([sys.executable, str(REPO_ROOT / "tools/preprocess_data.py"), "--input",
                   str(shared_data / "corpus.jsonl"), "--output-prefix", str(tmp_path / "ref"),
                   "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file",
                   str(shared_data / "gpt2-vocab.json"), "--merge-file",
                   str(shared_data / "gpt2-merges.txt"), "--append-eod", "--workers", "2"],
                  check=True, capture_output=True, timeout=300)
    output = run_pretrain(_text_args(
        str(tmp_path / "ref_text_document"),
        ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(shared_data / "gpt2-vocab.json"),
         "--merge-file", str(shared_data / "gpt2-merges.txt")], iterations=50,
        extra=["--no-pipeline-parallel"]))
    _assert_learns(losses_by_iteration(output))


@pytest.fixture(scope="module")
def random_dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("random") / "random_text_document")


def test_validation_at_interval_and_test_at_end(random_dataset, tmp_path):
    output = run_pretrain(tiny_gpt_args(random_dataset, train_iters=6, extra=[
        "--eval-interval", "3", "--eval-iters", "2", "--pipeline-model-parallel-size", "1",
        "--tensorboard-dir", str(tmp_path / "tb"), "--log-validation-ppl-to-tensorboard"]))
    results = validation_results(output)
    prefixes = [prefix for prefix, _, _ in results]
    assert prefixes == ["iteration 3", "iteration 6", "the end of training for val data",
                        "the end of training for test data"], output[-3000:]
    for _, loss, ppl in results:
        assert ppl == pytest.approx(2.718281828 ** loss, rel=1e-5)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "no tensorboard events written"


def test_log_line_ends_with_peak_memory_and_eta(random_dataset):
    """Two ranks (the memory is the larger of both); the fields come last and the ETA counts
    down to 0:00:00 at the last iteration."""
    import psutil

    output = run_pretrain(tiny_gpt_args(random_dataset, train_iters=3,
                                        extra=["--no-pipeline-parallel"]), num_procs=2)
    lines = [line for line in output.splitlines() if line.startswith(" iteration ")]
    assert len(lines) == 3
    for line in lines:
        assert re.search(r" tokens per second per device: [0-9.]+ \| peak memory \(GiB\): "
                         r"[0-9.]+ \| ETA: \d+:\d\d:\d\d \|$", line), line
    peak_gib = float(re.search(r"peak memory \(GiB\): ([0-9.]+)", lines[-1]).group(1))
    # A rank imports torch and deepspeed (hundreds of MiB); none can exceed the machine.
    assert 0.2 < peak_gib < psutil.virtual_memory().total / 2 ** 30
    assert lines[-1].endswith(" ETA: 0:00:00 |")


def _run_with_injected_nan(data_prefix, iterations, spec, extra=()):
    return run_with_injected_nan(data_prefix, iterations, spec,
                                 extra=["--no-pipeline-parallel", *extra])


def test_nonfinite_loss_is_counted_logged_and_skipped(random_dataset, tmp_path):
    completed = _run_with_injected_nan(random_dataset, 6, "3", extra=[
        "--save", str(tmp_path / "save"), "--save-interval", "1"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert_skipped_step_changed_nothing(tmp_path / "save", skipped=3)
    lines = {int(line.split("/")[0].split()[-1]): line for line in completed.stdout.splitlines()
             if line.startswith(" iteration ")}
    assert "number of nan iterations:   1" in lines[3]
    assert "number of skipped iterations:   1" in lines[3]
    assert "lm loss" not in lines[3]          # nothing finite to average
    assert "number of nan iterations:   0" in lines[4]
    clean = run_pretrain(tiny_gpt_args(random_dataset, train_iters=6,
                                       extra=["--no-pipeline-parallel"]))
    # The skipped update left the weights alone: iteration 4 sees the weights of iteration 3,
    # which the clean run also had (it differs only from iteration 4's update on).
    assert losses_by_iteration(completed.stdout)[2] == losses_by_iteration(clean)[2]
    assert losses_by_iteration(completed.stdout)[4] == pytest.approx(
        losses_by_iteration(clean)[3], rel=0.05)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_skipped_step_without_zero_leaves_weights_and_optimizer_bit_identical(random_dataset,
                                                                               tmp_path, precision):
    """ZeRO stage 0: the weights, the Adam moments and, in bf16, the fp32 master weights stay.

    In fp32 only the step guard (megatron/training/nonfinite.py) protects them here:
    DeepSpeed 0.19.8 skips a non-finite gradient norm on its own under ZeRO 1/2 and in its
    bf16 optimizer, but hands fp32 ZeRO-0 gradients straight to the client optimizer (checked:
    with the guard bypassed, the fp32 case fails and the others pass)."""
    completed = _run_with_injected_nan(random_dataset, 4, "3", extra=[
        "--zero-stage", "0", "--save", str(tmp_path / "save"), "--save-interval", "1",
        *(["--bf16"] if precision == "bf16" else [])])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "number of skipped iterations:   1" in completed.stdout
    assert_skipped_step_changed_nothing(tmp_path / "save", skipped=3)
    weights = saved_training_state(tmp_path / "save", 3)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert all(tensor.dtype == dtype
               for name, tensor in weights.items() if name.startswith("module"))
    if precision == "bf16":
        assert any(tensor.dtype == torch.float32 and tensor.numel() > 1000
                   for name, tensor in weights.items() if "fp32" in name), "no fp32 master weights"


def test_persistent_nonfinite_loss_stops_the_run(random_dataset):
    completed = _run_with_injected_nan(random_dataset, 20, "4-20",
                                       extra=["--max-consecutive-nonfinite-iterations", "3"])
    assert completed.returncode == 1
    assert "non-finite for 3 consecutive iterations (up to iteration 6)" in completed.stderr
