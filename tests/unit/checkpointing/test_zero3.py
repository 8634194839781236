"""ZeRO-3's loading rules without processes: which folders count as ZeRO-3, the refusals, and
the weights-only load that forgets the optimizer state it had to load."""
import pytest
import torch

from megatron.checkpointing import CheckpointError
from megatron.checkpointing.layout import ParallelLayout, is_zero3_checkpoint, model_states_files
from megatron.checkpointing.zero3 import check_zero3_compatible, load_zero3_weights_only


def _folder(tmp_path, names):
    tag_dir = tmp_path / "global_step4"
    tag_dir.mkdir(parents=True)
    for name in names:
        (tag_dir / name).write_bytes(b"")
    return tag_dir


ZERO3_FILES = ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
               "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
ZERO1_FILES = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
               "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_zero3_folders_are_told_apart(tmp_path):
    zero3, zero1 = _folder(tmp_path / "a", ZERO3_FILES), _folder(tmp_path / "b", ZERO1_FILES)
    assert is_zero3_checkpoint(str(zero3)) and not is_zero3_checkpoint(str(zero1))
    assert [p.split("/")[-1] for p in model_states_files(str(zero3))] == ZERO3_FILES[:2]
    assert [p.split("/")[-1] for p in model_states_files(str(zero1))] == ["mp_rank_00_model_states.pt"]


LAYOUT_DP2 = ParallelLayout(1, 1, 2, False)
LAYOUT_DP1 = ParallelLayout(1, 1, 1, False)


def test_stage_mismatch_and_other_layout_are_refused(tmp_path):
    _folder(tmp_path, ZERO3_FILES)
    check_zero3_compatible(str(tmp_path), "global_step4", zero_stage=3, other_layout=None, layout=LAYOUT_DP2)
    with pytest.raises(CheckpointError, match=r"saved with ZeRO stage 3 and this run uses ZeRO stage 2 "
                                              r"\(--zero-stage\)"):
        check_zero3_compatible(str(tmp_path), "global_step4", zero_stage=2, other_layout=None,
                               layout=LAYOUT_DP2)
    with pytest.raises(CheckpointError, match=r"saved with ZeRO stage 3 on TP1 x PP1 x DP2 \(ZeRO engine\) "
                                              r"and this run is TP1 x PP1 x DP1 .*resume on the saved layout"):
        check_zero3_compatible(str(tmp_path), "global_step4", zero_stage=3, other_layout=LAYOUT_DP2,
                               layout=LAYOUT_DP1)


def test_a_zero3_run_refuses_other_checkpoints(tmp_path):
    _folder(tmp_path, ZERO1_FILES)
    check_zero3_compatible(str(tmp_path), "global_step4", zero_stage=1, other_layout=LAYOUT_DP2,
                           layout=LAYOUT_DP1)
    with pytest.raises(CheckpointError, match=r"saved with ZeRO stage 0, 1 or 2 and this run uses ZeRO stage 3"):
        check_zero3_compatible(str(tmp_path), "global_step4", zero_stage=3, other_layout=None,
                               layout=LAYOUT_DP1)


class _Zero3Engine:
    """The parts of DeepSpeed's engine and ZeRO-3 optimizer the weights-only load touches:
    `load_checkpoint` here loads like DeepSpeed would with the optimizer states."""

    def __init__(self):
        self.param = torch.nn.Parameter(torch.zeros(4))
        base = torch.optim.AdamW([self.param], lr=0.5, weight_decay=0.0)
        self.optimizer = type("Zero3Optimizer", (), {"optimizer": base})()
        self.checkpoint_engine = object()
        self.global_steps, self.global_samples, self.skipped_steps = 0, 0, 0
        self.calls = []

    def load_checkpoint(self, load_dir, *, tag, load_optimizer_states, load_lr_scheduler_states):
        self.calls.append((load_dir, tag, load_optimizer_states, load_lr_scheduler_states))
        base = self.optimizer.optimizer
        with torch.no_grad():
            self.param.copy_(torch.arange(4.0))          # the tag's weights
        base.state[self.param] = {"step": torch.tensor(7.0), "exp_avg": torch.ones(4),
                                  "exp_avg_sq": torch.ones(4)}
        base.param_groups[0]["lr"] = 0.125               # the saved hyper-parameters
        self.global_steps, self.global_samples, self.skipped_steps = 7, 56, 1
        return f"{load_dir}/{tag}", {"train_state": {"iteration": 7}}


@pytest.mark.parametrize("finetune", [False, True])
def test_weights_of_the_tag_with_a_fresh_optimizer(finetune):
    engine = _Zero3Engine()
    path, client = load_zero3_weights_only(engine, "ckpt", "global_step7", finetune=finetune)
    assert engine.calls == [("ckpt", "global_step7", True, False)]  # the tag, never `latest`
    assert path == "ckpt/global_step7" and client["train_state"]["iteration"] == 7
    assert torch.equal(engine.param.detach(), torch.arange(4.0))
    base = engine.optimizer.optimizer
    assert not base.state and base.param_groups[0]["lr"] == 0.5
    counters = (engine.global_steps, engine.global_samples, engine.skipped_steps)
    assert counters == ((0, 0, 0) if finetune else (7, 56, 1))
    # The first step after the load is a first step: Adam's bias correction from step 1.
    engine.param.grad = torch.ones(4)
    base.step()
    assert float(base.state[engine.param]["step"]) == 1.0
