"""The optimizer state of upstream's TP2 (ZeRO engine) and PP2 (pipeline engine) checkpoints,
read whole: fp32 runs keep master weights equal to the module weights (so every fragment
must land where the reader puts it), Adam's step is the iteration, and the moments have each
parameter's full shape with the second moment non-negative."""
from pathlib import Path

import pytest
import torch

from megatron.conversion.checkpoint_reader import open_checkpoint
from megatron.conversion.optimizer_reader import read_optimizer_state

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "upstream"


@pytest.mark.parametrize("name", ["checkpoint_tp2", "checkpoint_pp2"])
def test_upstream_optimizer_state(name):
    checkpoint = open_checkpoint(str(FIXTURES / name))
    weights = checkpoint.state_dict()
    state = read_optimizer_state(checkpoint)
    assert state.step == 5.0
    assert sorted(state.tensors) == sorted(weights)
    for parameter, tensors in state.tensors.items():
        assert torch.equal(tensors["fp32"], weights[parameter]), parameter
        assert tensors["exp_avg"].shape == weights[parameter].shape
        assert (tensors["exp_avg_sq"] >= 0).all() and tensors["exp_avg_sq"].abs().sum() > 0


def test_a_checkpoint_without_optimizer_files_is_refused(tmp_path):
    import shutil

    copy = tmp_path / "tp2"
    shutil.copytree(FIXTURES / "checkpoint_tp2", copy)
    for path in (copy / "global_step5").glob("*optim_states.pt"):
        path.unlink()
    with pytest.raises(ValueError, match="has no ZeRO optimizer files.*--no-load-optim"):
        read_optimizer_state(open_checkpoint(str(copy)))
