"""Whole-program training runs: learning on real text, evaluation lines, non-finite losses."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional.launch import (REPO_ROOT, losses_by_iteration, run_pretrain, tiny_gpt_args,
                                     validation_results, write_random_dataset)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    """The demo corpus (Python standard library text) with its own SentencePiece model."""
    directory = tmp_path_factory.mktemp("demo")
    python = sys.executable
    subprocess.run([python, str(REPO_ROOT / "tools/build_demo_corpus.py"), "--output",
                    str(directory / "corpus.jsonl"), "--max-mb", "2", "--sentencepiece-prefix",
                    str(directory / "spm"), "--vocab-size", "2048"], check=True, capture_output=True)
    subprocess.run([python, str(REPO_ROOT / "tools/preprocess_data.py"), "--input",
                    str(directory / "corpus.jsonl"), "--output-prefix", str(directory / "demo"),
                    "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
                    str(directory / "spm.model"), "--append-eod", "--workers", "1"],
                   check=True, capture_output=True)
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
    subprocess.run([sys.executable, str(REPO_ROOT / "tools/preprocess_data.py"), "--input",
                    str(shared_data / "corpus.jsonl"), "--output-prefix", str(tmp_path / "ref"),
                    "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file",
                    str(shared_data / "gpt2-vocab.json"), "--merge-file",
                    str(shared_data / "gpt2-merges.txt"), "--append-eod", "--workers", "2"],
                   check=True, capture_output=True)
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


def _run_with_injected_nan(data_prefix, iterations, spec, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", INJECT_NAN_ITERATIONS=spec)
    return subprocess.run(
        [sys.executable, str(Path(__file__).with_name("nonfinite_entry.py")),
         *tiny_gpt_args(data_prefix, train_iters=iterations,
                        extra=["--no-pipeline-parallel", *extra])],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_nonfinite_loss_is_counted_logged_and_skipped(random_dataset):
    completed = _run_with_injected_nan(random_dataset, 6, "3")
    assert completed.returncode == 0, completed.stderr[-3000:]
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


def test_persistent_nonfinite_loss_stops_the_run(random_dataset):
    completed = _run_with_injected_nan(random_dataset, 20, "4-20",
                                       extra=["--max-consecutive-nonfinite-iterations", "3"])
    assert completed.returncode == 1
    assert "non-finite for 3 consecutive iterations (up to iteration 6)" in completed.stderr
