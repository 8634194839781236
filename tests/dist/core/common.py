"""Shared helpers for the core multi-process tests (run inside the ranks)."""
import torch
import torch.distributed as dist

from megatron.core import parallel_state

# fp32 on CPU: parallel results differ from the single-process reference only by
# summation order, so a tight tolerance applies.
ATOL = 1e-5
RTOL = 1e-5


def setup(tensor_model_parallel_size: int, pipeline_model_parallel_size: int = 1) -> int:
    """Initialize the groups and return this rank's tensor-parallel rank."""
    parallel_state.initialize_model_parallel(tensor_model_parallel_size,
                                             pipeline_model_parallel_size)
    return parallel_state.get_tensor_model_parallel_rank()


def randn(*shape: int, seed: int) -> torch.Tensor:
    """Deterministic data: the same on every rank for the same seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def chunk(tensor: torch.Tensor, dim: int, index: int, parts: int) -> torch.Tensor:
    """The `index`-th of `parts` equal contiguous blocks along `dim` (written out)."""
    size = tensor.size(dim) // parts
    return tensor.narrow(dim, index * size, size)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not torch.allclose(actual, expected, atol=ATOL, rtol=RTOL):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(f"{what} on rank {dist.get_rank()}: max abs diff {diff}")
