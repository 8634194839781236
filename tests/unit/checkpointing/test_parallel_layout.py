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
