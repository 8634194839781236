"""What an optimizer step may change, read from a checkpoint folder, for non-finite-step tests.

A skipped step must leave weights, optimizer state and the scheduler exactly as they were; these
helpers gather those tensors from every file of a step (either engine, any number of ranks) and
compare steps. Written independently of megatron's checkpoint code: plain torch.load and the
file names DeepSpeed writes.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import torch

from tests import processes
from tests.functional.checkpoint_tensors import collect_tensors
from tests.functional.launch import REPO_ROOT, pretrain_command, tiny_gpt_args

NONFINITE_ENTRY = Path(__file__).with_name("nonfinite_entry.py")


def run_with_injected_nan(data_prefix: str, iterations: int, spec: str, *, extra: Sequence[str] = (),
                          num_procs: int = 1) -> subprocess.CompletedProcess:
    """pretrain_gpt.py (through nonfinite_entry.py) with NaN losses in the iterations of `spec`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", INJECT_NAN_ITERATIONS=spec)
    command = pretrain_command(num_procs=num_procs, script=NONFINITE_ENTRY)
    if num_procs == 1:
        command = [sys.executable, str(NONFINITE_ENTRY)]
    return processes.run([*command, *tiny_gpt_args(data_prefix, train_iters=iterations, extra=extra)],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def saved_training_state(save_dir: Path, iteration: int) -> Dict[str, torch.Tensor]:
    """The model's weights ("module/..." from `mp_rank_*_model_states.pt`, or the pipeline
    engine's `layer_*` files), the optimizer state ("optimizer/...": AdamW's step, exp_avg,
    exp_avg_sq and the fp32 master weights of bf16 or ZeRO, from every `*zero_pp_rank_*` shard,
    or the model file at ZeRO stage 0) and every model file's scheduler step count."""
    step = save_dir / f"global_step{iteration}"
    state: Dict[str, torch.Tensor] = {}
    model_files = sorted(step.glob("mp_rank_*_model_states.pt"))
    zero_files = sorted(step.glob("*zero_pp_rank_*_mp_rank_*_optim_states.pt"))
    assert model_files, f"no model states in {step}"
    for path in model_files:
        model = torch.load(path, map_location="cpu", weights_only=False)
        if model.get("module") is not None:
            collect_tensors(model["module"], f"module/{path.name}", state)
        if not zero_files:
            collect_tensors(model["optimizer"], f"optimizer/{path.name}", state)
        state[f"scheduler steps/{path.name}"] = torch.tensor(model["opt_param_scheduler"]["num_steps"])
    for path in sorted(step.glob("layer_*-model_*-model_states.pt")):
        collect_tensors(torch.load(path, map_location="cpu", weights_only=False),
                        f"module/{path.name}", state)
    for path in zero_files:
        shard = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        collect_tensors(shard, f"optimizer/{path.name}", state)
    for part in ("exp_avg", "exp_avg_sq", "step"):
        assert any(name.endswith(part) for name in state), f"no {part} in {sorted(state)}"
    assert any(name.startswith("module/") for name in state), f"no weights in {step}"
    return state


def assert_skipped_step_changed_nothing(save_dir: Path, skipped: int) -> None:
    """The checkpoints saved after iterations skipped-1 and skipped are bit-identical in
    everything a step changes, while the next, applied, step changes all of the optimizer
    state (so the comparison can tell)."""
    before = saved_training_state(save_dir, skipped - 1)
    after = saved_training_state(save_dir, skipped)
    applied = saved_training_state(save_dir, skipped + 1)
    assert sorted(after) == sorted(before) == sorted(applied)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), (
            f"the skipped step {skipped} changed {name}")
    # Moments that stay zero belong to a parameter no loss reaches (the pipeline's last stage
    # holds the tied embedding module whole, its position embeddings included): left out.
    unmoved = [name for name, tensor in before.items()
               if name.startswith(("optimizer", "scheduler")) and torch.equal(applied[name], tensor)
               and not (name.endswith(("exp_avg", "exp_avg_sq")) and not tensor.any())]
    assert not unmoved, f"the applied step {skipped + 1} left {unmoved} unchanged"
