"""broadcast_data: every TP rank receives its TP source rank's tensors."""
import pytest
import torch

from megatron.core import parallel_state
from megatron.core.tensor_parallel import broadcast_data
from tests.dist.core.common import setup
from tests.harness import run_on_ranks


def _broadcast(tp):
    rank = setup(tp)
    source = parallel_state.get_tensor_model_parallel_src_rank()
    data = None
    if rank == 0:
        generator = torch.Generator().manual_seed(torch.distributed.get_rank())
        data = {"text": torch.randint(0, 100, (2, 5), generator=generator),
                "mask": torch.randint(0, 2, (3,), generator=generator),
                "empty": torch.zeros(0, 4, dtype=torch.long)}
    out = broadcast_data(["text", "mask", "empty"], data, torch.int64)
    return source, {key: value.clone() for key, value in out.items()}


@pytest.mark.parametrize("tp,world_size", [(1, 2), (2, 2), (4, 4), (2, 4)])
def test_broadcast_from_tensor_parallel_source(tp, world_size):
    results = run_on_ranks(_broadcast, tp, world_size=world_size)
    for rank, (source, received) in enumerate(results):
        assert source == rank - rank % tp
        generator = torch.Generator().manual_seed(source)
        assert torch.equal(received["text"], torch.randint(0, 100, (2, 5), generator=generator))
        assert torch.equal(received["mask"], torch.randint(0, 2, (3,), generator=generator))
        assert received["empty"].shape == (0, 4)


def _wrong_dtype():
    setup(2)
    data = {"text": torch.zeros(2, dtype=torch.int32)}
    if parallel_state.get_tensor_model_parallel_rank() != 0:
        return "not source"
    try:
        broadcast_data(["text"], data, torch.int64)
    except ValueError as error:
        return str(error)
    return "no error"


def test_wrong_dtype_is_a_value_error():
    message = run_on_ranks(_wrong_dtype, world_size=2)[0]
    assert "text" in message and "torch.int32" in message
