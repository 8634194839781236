"""A checkpoint written before the package restructuring resumes exactly with today's code.

tests/fixtures/pre_restructure_checkpoint/ was saved at iteration 2 by commit eddf0d6
(tests/fixtures/make_pre_restructure_checkpoint.py tells how); expected.json holds what that
commit's uninterrupted 4-iteration run printed and the SHA-256 of its final weights. Resuming
here must continue the same curve: equal printed losses and grad norms, and bit-identical final
weights (fp32 on CPU, dropout on).
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.functional.launch import run_pretrain, tiny_gpt_args, write_random_dataset

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_restructure_checkpoint"
_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|.*? grad norm: ([0-9.]+) \|")


def _digests(tag_dir: Path) -> dict:
    digests = {}
    for path in sorted(tag_dir.glob("layer_*-model_states.pt")):
        for name, value in torch.load(path, map_location="cpu", weights_only=False).items():
            data = value.detach().contiguous().numpy().tobytes()
            digests[f"{path.name}:{name}"] = hashlib.sha256(data).hexdigest()
    return digests


def test_resumes_the_same_curve_and_weights(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    load_dir = tmp_path / "old"
    shutil.copytree(FIXTURE, load_dir, ignore=shutil.ignore_patterns("expected.json"))
    dataset = write_random_dataset(tmp_path / "random_text_document")
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=expected["train_iters"], extra=[
        "--load", str(load_dir), "--save", str(tmp_path / "new"), "--save-interval", "1000"]))
    assert f"loaded checkpoint global_step{expected['saved_iteration']}" in output
    printed = {iteration: (loss, norm) for iteration, loss, norm in _LINE.findall(output)}
    resumed = [i for i in expected["losses"] if int(i) > expected["saved_iteration"]]
    assert resumed and sorted(printed) == sorted(resumed)
    for iteration in resumed:
        assert printed[iteration] == (expected["losses"][iteration],
                                      expected["grad_norms"][iteration]), iteration
    final = tmp_path / "new" / f"global_step{expected['train_iters']}"
    assert _digests(final) == expected["final_weight_sha256"]
