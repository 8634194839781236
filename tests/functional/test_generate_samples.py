"""tools/generate_samples_gpt.py end to end, on a checkpoint the pipeline engine wrote (PP2):
read whole on one process and split over two tensor-parallel ranks, with the model flags
taken from the checkpoint (--use-checkpoint-args).

The model is trained for 150 iterations on ids that mostly count up (tests/functional/
launch.py), so its greedy continuations of counting prompts are peaked. The reference is
written here independently: the checkpoint's tensors merged by the layout test's own
reader, a plain GPTModel, and greedy decoding by recomputing the whole sequence each step.
"""
import json
import re
from pathlib import Path

import pytest
import torch

from tests import processes
from tests.functional.launch import (REPO_ROOT, VOCAB_SIZE, losses_by_iteration, pretrain_command,
                                     run_pretrain, tiny_gpt_args, write_random_dataset)
from tests.functional.test_layout_equivalence import merged_weights
from tests.harness import run_on_ranks

pytestmark = pytest.mark.slow
TOOL = REPO_ROOT / "tools" / "generate_samples_gpt.py"
PROMPTS = ["5 6 7 8 9", "100 101 102", "300", ""]
GENERATE = 10
_ERROR = re.compile(r"^generate_samples_gpt\.py: error: .*$", re.MULTILINE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    data = write_random_dataset(root / "data")
    output = run_pretrain(tiny_gpt_args(data, train_iters=150, extra=[
        "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "10", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--pipeline-model-parallel-size", "2",
        "--save", str(root / "checkpoint"), "--save-interval", "150"]), num_procs=2)
    assert losses_by_iteration(output)[150] < 4.5, output[-2000:]
    return root / "checkpoint"


def run_tool(args, *, num_procs=1, launcher="torchrun", expect_success=True):
    command = pretrain_command(num_procs=num_procs, launcher=launcher, script=TOOL)
    completed = processes.run(command + [str(arg) for arg in args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=240,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    output = completed.stdout + completed.stderr
    if expect_success:
        assert completed.returncode == 0, output[-4000:]
    else:
        assert completed.returncode != 0, output[-4000:]
    return output


def _continuations(path: Path):
    text = path.read_text()
    contexts = re.findall(r"\nContext:(.*)\n\n\nMegatron-LM:(.*)\n", text)
    return [(context, continuation.split()) for context, continuation in contexts]


def greedy_reference(weights, prompts, steps):
    """Greedy decoding by recomputing the whole sequence (no cache), stopping at EOD."""
    from megatron.model.gpt_model import GPTModel
    from tests.dist.model.model_utils import setup_parallel
    from megatron.model.transformer_config import TransformerConfig

    setup_parallel(1)
    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                               seq_length=32, max_position_embeddings=32,
                               padded_vocab_size=512, hidden_dropout=0.0, attention_dropout=0.0,
                               use_cpu_initialization=True)
    model = GPTModel(config, parallel_output=False).eval()
    model.load_state_dict(weights)
    results, margins = [], []
    with torch.no_grad():
        for prompt in prompts:
            tokens = prompt[:]
            for _ in range(steps):
                logits = model(torch.tensor([tokens]), torch.arange(len(tokens))[None], None)
                top2 = torch.topk(logits[0, -1], 2).values
                margins.append((top2[0] - top2[1]).item())
                token = int(logits[0, -1].argmax())
                if token == VOCAB_SIZE:  # EOD
                    break
                tokens.append(token)
            results.append(tokens[len(prompt):])
    return results, min(margins)


def test_conditional_samples_on_one_and_two_ranks(checkpoint, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    common = ["--load", checkpoint, "--use-checkpoint-args", "--sample-input-file", prompts_file,
              "--out-seq-length", GENERATE, "--greedy", "--micro-batch-size", 4]
    run_tool(common)
    one_rank = _continuations(Path(str(prompts_file) + ".out"))
    run_tool(common + ["--tensor-model-parallel-size", 2, "--sample-output-file",
                       tmp_path / "tp2.out"], num_procs=2, launcher="deepspeed")
    run_tool(common + ["--recompute", "--sample-output-file", tmp_path / "recompute.out"])
    assert [context for context, _ in one_rank] == PROMPTS
    assert _continuations(tmp_path / "tp2.out") == one_rank
    assert _continuations(tmp_path / "recompute.out") == one_rank

    prompt_ids = [[int(t) for t in p.split()] if p else [VOCAB_SIZE] for p in PROMPTS]
    expected, margin = run_on_ranks(greedy_reference, merged_weights(checkpoint), prompt_ids,
                                    GENERATE, world_size=1)[0]
    assert margin > 1e-4, "a near-tie makes the greedy reference ambiguous"
    assert [[int(t) for t in continuation] for _, continuation in one_rank] == expected
    assert expected[0][:3] == [10, 11, 12] or expected[2][:3] == [301, 302, 303]  # it learned


def test_unconditional_samples_are_reproducible(checkpoint, tmp_path):
    args = ["--load", checkpoint, "--use-checkpoint-args", "--num-samples", 3,
            "--out-seq-length", 8, "--top_k", 20, "--temperature", 1.5, "--micro-batch-size", 2]
    run_tool(args + ["--genfile", tmp_path / "a.jsonl"])
    run_tool(args + ["--genfile", tmp_path / "b.jsonl"])
    run_tool(args + ["--genfile", tmp_path / "c.jsonl", "--seed", 99])
    samples = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    for sample in samples:
        assert set(sample) == {"text", "length", "finished"}
        assert sample["length"] == len(sample["text"].split()) <= 8
        assert sample["finished"] == (sample["length"] < 8)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "a.jsonl").read_text() != (tmp_path / "c.jsonl").read_text()


def test_bad_input_is_one_line(checkpoint, tmp_path):
    existing = tmp_path / "existing.out"
    existing.write_text("keep me")
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("1 2 3\n" + " ".join(["7"] * 40) + "\n")
    not_ids = tmp_path / "words.txt"
    not_ids.write_text("ok 1 2\n")
    cases = {
        "no such directory": ["--load", tmp_path / "missing", "--num-samples", 1,
                              "--genfile", tmp_path / "g.jsonl"],
        "prompts.txt: no such file": ["--load", checkpoint, "--use-checkpoint-args",
                                      "--sample-input-file", tmp_path / "prompts.txt"],
        "line 2: the prompt has 40 tokens": ["--load", checkpoint, "--use-checkpoint-args",
                                             "--sample-input-file", long_prompt],
        "words.txt line 1: invalid literal": ["--load", checkpoint, "--use-checkpoint-args",
                                              "--sample-input-file", not_ids],
        "already exists": ["--load", checkpoint, "--use-checkpoint-args", "--num-samples", 1,
                           "--genfile", existing],
        "--hidden-size 128 disagrees with the checkpoint's 64": [
            "--load", checkpoint, "--use-checkpoint-args", "--hidden-size", 128,
            "--num-samples", 1, "--genfile", tmp_path / "h.jsonl"],
    }
    for expected, args in cases.items():
        output = run_tool(args, expect_success=False)
        errors = _ERROR.findall(output)
        assert len(errors) == 1 and expected in errors[0], (expected, output[-2000:])
    assert existing.read_text() == "keep me"
    assert not (tmp_path / "g.jsonl").exists() and not (tmp_path / "h.jsonl").exists()
    assert not Path(str(long_prompt) + ".out").exists()
    output = run_tool(["--load", checkpoint, "--no-such-flag"], expect_success=False)
    assert "unrecognized arguments: --no-such-flag" in output
