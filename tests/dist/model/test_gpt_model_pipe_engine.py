"""GPTModelPipe through DeepSpeed's PipelineEngine (PP2, TP2xPP2, CPU/gloo) vs GPTModel.

The engine runs one train_batch of 2 micro-batches in fresh processes
(pipe_engine_worker.py); the reference is GPTModel on one rank computing the mean over
the micro-batches of the masked mean loss. Loss (train and eval) and every gradient
(tied embedding gradients summed across stages by the engine) must match:
rtol 1e-5 atol 1e-6 for the loss, rtol 1e-4 atol 1e-6 for gradients (fp32).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron.model.gpt_model import GPTModel
from tests import processes
from tests.dist.model.model_utils import full_params_and_grads, make_config, setup_parallel
from tests.dist.model.pipe_engine_worker import micro_batches
from tests.harness import run_on_ranks

REPO = Path(__file__).resolve().parents[3]


def reference(variant: str, document_mask: bool):
    setup_parallel(1)
    model = GPTModel(make_config(variant))
    batches = micro_batches(document_mask)
    total = 0.0
    for (tokens, position_ids, mask), (labels, loss_mask) in batches:
        losses = model(tokens, position_ids, mask, labels=labels)
        total = total + (losses * loss_mask).sum() / loss_mask.sum()
    loss = total / len(batches)
    loss.backward()
    return {"loss": loss.detach(), "grads": full_params_and_grads(model)["grads"]}


def _run_engine(tmp_path, tp, pp, variant, document_mask, recompute="none"):
    cmd = [sys.executable, "-m", "tests.dist.model.pipe_engine_worker", "--tp", str(tp),
           "--pp", str(pp), "--variant", variant, "--out", str(tmp_path), "--recompute", recompute]
    if document_mask:
        cmd.append("--document-mask")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    try:
        proc = processes.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=150)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"pipeline engine run timed out:\n{(error.output or '')[-4000:]}")
    output = proc.stdout
    assert proc.returncode == 0, output[-6000:]
    return [torch.load(path) for path in sorted(Path(tmp_path).glob("rank*.pt"))]


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,variant,document_mask,recompute", [
    (1, 2, "default", True, "none"),
    (2, 2, "llama", False, "none"),
    # Activation recompute inside the pipeline (dropout off here: same function as GPTModel;
    # with dropout on, tests/functional/test_recompute_training.py compares whole runs).
    (1, 2, "default", True, "legacy"),
    (1, 2, "default", True, "selective"),
    (2, 2, "default", False, "deepspeed"),
    (1, 2, "llama", False, "block"),
])
def test_pipeline_engine_matches_gpt_model(tmp_path, tp, pp, variant, document_mask, recompute):
    ref = run_on_ranks(reference, variant, document_mask, world_size=1)[0]
    results = _run_engine(tmp_path, tp, pp, variant, document_mask, recompute)
    assert sorted(r["stage"] for r in results) == list(range(pp))
    # Each layer runs once per micro-batch in train_batch and in eval_batch (2 + 2), plus
    # once more per training micro-batch when it is recomputed in backward.
    expected_calls = 4 if recompute == "none" else 6
    for result in results:
        assert result["layer_calls"] and set(result["layer_calls"].values()) == {expected_calls}
    grads = {}
    for result in sorted(results, key=lambda r: r["stage"]):
        torch.testing.assert_close(result["train_loss"].float().reshape(()), ref["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["eval_loss"].float().reshape(()), ref["loss"], rtol=1e-5, atol=1e-6)
        for name, grad in result["grads"].items():
            if name.endswith("word_embeddings.weight") and name in grads:
                # tied: the engine sums the two stages' gradients into both copies
                torch.testing.assert_close(grad, grads[name], rtol=1e-6, atol=1e-7)
            elif name in grads:
                # the last stage's copy of the tied module also holds position embeddings
                # (as upstream); they are unused there and get a zero gradient
                assert name.endswith("position_embeddings.weight") and not grad.any(), name
                continue
            grads[name] = grad
    assert sorted(grads) == sorted(ref["grads"])
    for name, grad in ref["grads"].items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")
