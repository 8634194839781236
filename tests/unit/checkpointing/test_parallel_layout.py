"""ParallelLayout: which differences need the tensors re-split, and a folder's layout read
from its files (upstream's TP2 and PP2 checkpoints)."""
from pathlib import Path

from megatron.checkpointing.layout import ParallelLayout, saved_layout

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "upstream"


def _layout(tp=1, pp=1, dp=1, pipeline=True):
    return ParallelLayout(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                          data_parallel_size=dp, pipeline_engine=pipeline)


def test_what_differs():
    base = _layout()
    assert not base.differs_from(_layout())
    assert base.differs_from(_layout(tp=2))
    assert base.differs_from(_layout(pp=2))
    assert base.differs_from(_layout(dp=2))
    assert base.differs_from(_layout(pipeline=False))
    assert not base.differs_from(_layout(dp=0))  # unknown data-parallel size: no ZeRO files
    assert str(_layout(tp=2, pp=4, dp=8)) == "TP2 x PP4 x DP8 (pipeline engine)"
    assert str(_layout(dp=0, pipeline=False)) == "TP1 x PP1 (ZeRO engine)"


def test_layout_of_upstream_checkpoints():
    assert saved_layout(str(FIXTURES / "checkpoint_tp2" / "global_step5"),
                        tensor_model_parallel_size=2, pipeline_model_parallel_size=1
                        ) == _layout(tp=2, pipeline=False)
    assert saved_layout(str(FIXTURES / "checkpoint_pp2" / "global_step5"),
                        tensor_model_parallel_size=1, pipeline_model_parallel_size=2
                        ) == _layout(pp=2)


def test_recover_interrupted_saves(tmp_path):
    from megatron.checkpointing.layout import recover_interrupted_saves

    for folder in ("global_step3", "global_step3.replaced", "global_step6.saving",
                   "global_step9.replaced", "not_a_step.saving"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "file").write_text(folder)
    (tmp_path / "latest").write_text("global_step9")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("6")
    actions = recover_interrupted_saves(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global_step3", "global_step9", "latest", "latest_checkpointed_iteration.txt",
        "not_a_step.saving"]
    assert (tmp_path / "global_step3" / "file").read_text() == "global_step3"
    assert (tmp_path / "global_step9" / "file").read_text() == "global_step9.replaced"
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "9"
    assert len(actions) == 4 and any("restored" in line for line in actions)
    assert recover_interrupted_saves(str(tmp_path)) == []
