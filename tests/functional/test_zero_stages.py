"""ZeRO-2 and ZeRO-3 with --no-pipeline-parallel through the real program: exact resume at DP2
and TP2 x DP2, ZeRO-3's weights-only loads, and the refusals.

The reference for "exact" is an uninterrupted run saving at N and 2N; the resumed run loads
its step N (--load-tag) and saves 2N elsewhere. Losses, learning rates and the validation at
2N compare by equality of the printed values, and every tensor of the two step-2N folders
(weights, ZeRO's fp32 partitions, Adam moments and step counts, random states) by torch.equal,
in fp32 on CPU with dropout on.
"""
import re

import pytest

from tests.functional.checkpoint_tensors import assert_same_tensors, checkpoint_tensors
from tests.functional.launch import (field_by_iteration, losses_by_iteration, run_pretrain,
                                     run_pretrain_refused, tiny_gpt_args, validation_results)
from tests.functional.zero_runs import CASES, N, zero_args

pytestmark = pytest.mark.slow


@pytest.fixture
def dataset(zero_dataset):
    return zero_dataset


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bit_identical(dataset, zero_straight_run, tmp_path, case):
    stage, procs, extra = CASES[case]
    straight_dir, straight = zero_straight_run(case)
    resumed_dir = tmp_path / "resumed"
    resumed = run_pretrain(zero_args(dataset, stage, *extra, "--load", str(straight_dir), "--load-tag",
                                 f"global_step{N}", "--save", str(resumed_dir), "--save-interval",
                                 str(N)), num_procs=procs)
    assert f"loaded checkpoint global_step{N}" in resumed
    expected = {i: loss for i, loss in losses_by_iteration(straight).items() if i > N}
    assert sorted(expected) == list(range(N + 1, 2 * N + 1))
    assert losses_by_iteration(resumed) == expected
    learning_rates = field_by_iteration(straight, "learning rate")
    assert field_by_iteration(resumed, "learning rate") == {i: learning_rates[i] for i in expected}
    assert validation_results(resumed)[0] == validation_results(straight)[1]  # at iteration 2N

    final = f"global_step{2 * N}"
    expected_tensors = checkpoint_tensors(straight_dir / final)
    assert_same_tensors(expected_tensors, checkpoint_tensors(resumed_dir / final))
    moments = [name for name in expected_tensors if name.endswith(".exp_avg_sq")]
    assert moments and all(expected_tensors[name].abs().sum() > 0 for name in moments)
    if stage == 3:
        # The trap: ZeRO-3's model-states files hold no weights; only its shards do.
        module = [t for name, t in expected_tensors.items() if "_model_states.pt.module." in name]
        assert module and all(t.numel() == 0 for t in module)
        assert any("fp32_flat_groups" in name for name in expected_tensors)


def test_zero3_no_load_optim_takes_the_weights_of_the_tag(dataset, zero_straight_run, tmp_path):
    """`latest` names step 2N; DeepSpeed's own weights-only path would rebuild the weights
    from there. Loading step N with --no-load-optim must give step N's weights and a fresh
    Adam."""
    stage, procs, extra = CASES["zero3-dp2"]
    straight_dir, straight = zero_straight_run("zero3-dp2")
    output = run_pretrain(zero_args(dataset, stage, *extra, "--load", str(straight_dir), "--load-tag",
                                f"global_step{N}", "--no-load-optim", "--save", str(tmp_path / "ckpt"),
                                "--save-interval", str(N)), num_procs=procs)
    assert "optimizer state not loaded" in output
    resumed, expected = losses_by_iteration(output), losses_by_iteration(straight)
    assert resumed[N + 1] == expected[N + 1]        # step N's weights, data and dropout
    assert resumed[N + 2] != expected[N + 2]        # the update used fresh Adam moments
    # Fresh Adam: N steps counted since the load, not 2N.
    saved = checkpoint_tensors(tmp_path / "ckpt" / f"global_step{2 * N}", with_rng=False)
    steps = [tensor for name, tensor in saved.items() if name.endswith(".step")]
    assert steps and all(float(step) == N for step in steps)


def test_zero3_finetune_loads_the_weights_of_the_tag(dataset, zero_straight_run):
    stage, procs, extra = CASES["zero3-dp2"]
    straight_dir, straight = zero_straight_run("zero3-dp2")
    output = run_pretrain(zero_args(dataset, stage, *extra, "--load", str(straight_dir), "--load-tag",
                                f"global_step{N}", "--finetune", "--skip-train"), num_procs=procs)
    at_n = [result for result in validation_results(straight) if result[0] == f"iteration {N}"][0]
    assert validation_results(output)[0][1:] == at_n[1:]


def test_zero3_checkpoint_elsewhere_is_refused_clearly(dataset, zero_straight_run):
    from megatron.checkpointing import CheckpointError
    from megatron.conversion.checkpoint_reader import open_checkpoint

    straight_dir, _ = zero_straight_run("zero3-dp2")
    for stage, expected in ((1, r"saved with ZeRO stage 3 and this run uses ZeRO stage 1 \(--zero-stage\)"),
                            (3, r"saved with ZeRO stage 3 on TP1 x PP1 x DP2 \(ZeRO engine\) and this run "
                                r"is TP1 x PP1 x DP1 .*not supported")):
        code, lines, output = run_pretrain_refused(zero_args(dataset, stage, "--load", str(straight_dir)))
        assert code != 0 and len(lines) == 1, output[-3000:]
        assert re.search(expected, lines[0]), lines[0]
    with pytest.raises(CheckpointError, match="written by ZeRO stage 3"):
        open_checkpoint(str(straight_dir))


def test_zero3_with_the_pipeline_engine_is_refused(dataset):
    # Both stages are refused by the same check (tests/unit/config/test_zero_offload_flags.py).
    code, lines, output = run_pretrain_refused(
        tiny_gpt_args(dataset, train_iters=1, extra=["--zero-stage", "3"]), num_procs=2)
    assert code != 0 and lines, output[-3000:]  # one line per rank that got to print it
    assert all("ZeRO stage 3 (--zero-stage" in line and "pipeline engine" in line for line in lines), lines
