"""ZeRO-Offload (optimizer on the CPU with DeepSpeed's CPU Adam, --cpu-optimizer) at ZeRO-1 and
ZeRO-2 on two data-parallel ranks: exact resume, and closeness to torch's AdamW.

Exact: an offload run resumed from its step N equals the uninterrupted offload run, every
tensor of step 2N by torch.equal. Close: DeepSpeedCPUAdam (AVX, its own operation order) is
not bit-identical to torch's fused AdamW; after 2N = 6 steps of the tiny model the losses
agree within 1e-5 and the weights, fp32 partitions and moments within rtol 1e-4 + atol 1e-6
(measured: weights differ by <= 1e-6, second moments by <= 2e-5 relative).

DeepSpeed compiles cpu_adam with ninja on first use (-march=native, minutes on 2 cores) into
its extension cache ($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions/py<ver>_cpu):
`cpu_adam_built` does that once, under its own timeout, before any run is timed.
"""
import json
import os
import sys

import pytest
import torch

from tests import processes
from tests.functional.checkpoint_tensors import assert_same_tensors, checkpoint_tensors
from tests.functional.launch import REPO_ROOT, losses_by_iteration, run_pretrain
from tests.functional.zero_runs import N, zero_args

pytestmark = pytest.mark.slow
_ADAM_TRAVEL = 2 * 2 * N * 1e-3  # two runs, each moving a weight at most lr (1e-3) per step
CPU_ADAM_BUILD_TIMEOUT_S = 1800  # a first compile on a busy 2-core machine took 4 minutes
_BUILD = ("from deepspeed.ops.op_builder import CPUAdamBuilder\n"
          "builder = CPUAdamBuilder()\n"
          "if not builder.is_compatible(verbose=False):\n"
          "    raise SystemExit(3)\n"
          "builder.load(verbose=False)\n")


@pytest.fixture(scope="module")
def cpu_adam_built():
    completed = processes.run([sys.executable, "-c", _BUILD], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=CPU_ADAM_BUILD_TIMEOUT_S,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    if completed.returncode == 3:
        pytest.skip("DeepSpeed's cpu_adam cannot be built here (no C++ compiler or ninja)")
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]


@pytest.fixture(scope="module")
def offload_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("offload") / "ds_offload.json"
    path.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    return str(path)


@pytest.fixture(scope="module")
def offload_run(cpu_adam_built, zero_dataset, offload_json, tmp_path_factory):
    """ZeRO stage -> (directory, output) of an uninterrupted offload run saving at N and 2N."""
    done = {}

    def run(stage):
        if stage not in done:
            directory = tmp_path_factory.mktemp(f"offload-zero{stage}") / "checkpoints"
            output = run_pretrain(zero_args(zero_dataset, stage, "--cpu-optimizer", "--deepspeed_config",
                                            offload_json, "--save", str(directory), "--save-interval",
                                            str(N)), num_procs=2)
            done[stage] = directory, output
        return done[stage]

    return run


@pytest.mark.parametrize("stage", [1, 2])
def test_offload_resume_is_bit_identical(zero_dataset, offload_json, offload_run, tmp_path, stage):
    straight_dir, straight = offload_run(stage)
    assert "> ZeRO-Offload: the optimizer state and step are on the CPU (DeepSpeedCPUAdam)" in straight
    resumed = run_pretrain(zero_args(zero_dataset, stage, "--cpu-optimizer", "--deepspeed_config",
                                     offload_json, "--load", str(straight_dir), "--load-tag",
                                     f"global_step{N}", "--save", str(tmp_path / "resumed"),
                                     "--save-interval", str(N)), num_procs=2)
    assert losses_by_iteration(resumed) == {
        i: loss for i, loss in losses_by_iteration(straight).items() if i > N}
    final = f"global_step{2 * N}"
    assert_same_tensors(checkpoint_tensors(straight_dir / final),
                        checkpoint_tensors(tmp_path / "resumed" / final))


def test_offload_is_close_to_torch_adamw(offload_run, zero_straight_run):
    (offload_dir, offload), (reference_dir, reference) = offload_run(2), zero_straight_run("zero2-dp2")
    offload_losses, reference_losses = losses_by_iteration(offload), losses_by_iteration(reference)
    assert offload_losses.keys() == reference_losses.keys() == set(range(1, 2 * N + 1))
    for iteration, loss in reference_losses.items():
        assert abs(offload_losses[iteration] - loss) <= 1e-5, iteration
    final = f"global_step{2 * N}"
    expected = checkpoint_tensors(reference_dir / final, with_rng=False)
    actual = checkpoint_tensors(offload_dir / final, with_rng=False)
    # The step counts differ in type only (a tensor in torch's AdamW, an int in CPU Adam).
    compared = [name for name in expected if expected[name].is_floating_point()
                and expected[name].numel() > 1 and name in actual]
    assert any("single_partition_of_fp32_groups" in name for name in compared)
    assert any(name.endswith("exp_avg_sq") for name in compared)
    for name in compared:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_with_fp32_gradient_accumulation_trains(zero_dataset, zero_straight_run, tmp_path):
    """--bf16 --accumulate-allreduce-grads-in-fp32 at ZeRO-1 (2 micro batches accumulated per
    step): the engine gets "data_types.grad_accum_dtype": "fp32" and so DeepSpeed's
    BF16_Optimizer (fp32 gradient accumulation; its state has no "zero_stage"), and training
    stays within bf16 rounding of the fp32 run: losses within 1e-3 (measured <= 1e-4); all
    weights together within 5e-3 relative L2 distance (measured 1.8e-3, mostly bf16's rounding
    of the layer-norm weights near 1); each tensor within rtol 2**-8 (bf16's relative spacing)
    + atol _ADAM_TRAVEL: the attention key bias gets a zero gradient up to rounding noise, which
    Adam turns into full-size steps in either direction (measured 2.5e-3 apart)."""
    directory = tmp_path / "bf16"
    output = run_pretrain(zero_args(zero_dataset, 1, "--bf16", "--accumulate-allreduce-grads-in-fp32",
                                    "--save", str(directory), "--save-interval", str(2 * N)),
                          num_procs=2)
    final = directory / f"global_step{2 * N}"
    model_states = torch.load(final / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert model_states["ds_config"]["data_types"] == {"grad_accum_dtype": "fp32"}
    # NonFiniteStepGuard checks the gradients; DeepSpeed's own overflow pass is off
    assert model_states["ds_config"]["bf16"] == {"enabled": True, "check_grad_overflow": False}
    optimizer_files = sorted(final.glob("bf16_zero_pp_rank_*_optim_states.pt"))
    assert len(optimizer_files) == 2
    optimizer_state = torch.load(optimizer_files[0], map_location="cpu", weights_only=False)
    assert "zero_stage" not in optimizer_state["optimizer_state_dict"]
    assert model_states["ds_config"]["gradient_accumulation_steps"] == 2

    reference_dir, reference = zero_straight_run("zero2-dp2")
    losses, reference_losses = losses_by_iteration(output), losses_by_iteration(reference)
    assert losses.keys() == reference_losses.keys()
    for iteration, loss in reference_losses.items():
        assert abs(losses[iteration] - loss) <= 1e-3, iteration
    weights = {name: tensor for name, tensor in model_states["module"].items() if torch.is_tensor(tensor)}
    reference_weights = torch.load(reference_dir / f"global_step{2 * N}" / "mp_rank_00_model_states.pt",
                                   map_location="cpu", weights_only=False)["module"]
    assert weights.keys() == reference_weights.keys()
    assert all(tensor.dtype == torch.bfloat16 for tensor in weights.values())
    distance = sum(((weights[name].float() - reference) ** 2).sum()
                   for name, reference in reference_weights.items()).sqrt()
    norm = sum((reference ** 2).sum() for reference in reference_weights.values()).sqrt()
    assert distance / norm <= 5e-3
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor.float(), reference_weights[name], rtol=2 ** -8,
                                   atol=_ADAM_TRAVEL, msg=name)
