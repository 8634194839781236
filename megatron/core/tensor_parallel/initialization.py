"""Layout-independent parameter initialization.

Every parameter is drawn from its own generator, seeded from a stable hash of the run's
seed and the parameter's global name (e.g. "layers.3.mlp.dense_h_to_4h.weight"). The draw
therefore never depends on what else this rank built before, and a model split with any
tensor- or pipeline-parallel layout holds exactly the slices of the single-rank model.
"""
import hashlib
from typing import Callable, Sequence

import torch

from megatron.core.tensor_parallel.utils import split_along_dim_with_stride

InitMethod = Callable[[torch.Tensor], object]


def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key) via sha256 (stable across processes and runs)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _run_seeded_on_cpu(seed: int, init_method: InitMethod, tensor: torch.Tensor) -> None:
    """Apply `init_method` to a CPU tensor with the CPU generator temporarily at `seed`."""
    saved = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(seed)
        init_method(tensor)
    finally:
        torch.set_rng_state(saved)


def _run_seeded_on_accelerator(seed: int, init_method: InitMethod, tensor: torch.Tensor) -> None:
    """Like `_run_seeded_on_cpu` for a tensor on the accelerator's current device."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    saved = accelerator.get_rng_state()
    try:
        accelerator.manual_seed(seed)
        init_method(tensor)
    finally:
        accelerator.set_rng_state(saved)


def layout_independent_init(full_shape: Sequence[int], init_method: InitMethod, *, seed: int,
                            key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full (unsplit) CPU tensor for parameter `key`, initialized by `init_method`
    under a generator seeded by (seed, key). Same result on every rank and layout."""
    full = torch.empty(tuple(full_shape), dtype=torch.float32)
    _run_seeded_on_cpu(derive_seed(seed, key), init_method, full)
    return full.to(dtype)


def init_partitioned_(weight: torch.Tensor, *, full_shape: Sequence[int], partition_dim: int,
                      stride: int, init_method: InitMethod, seed: int, key: str, rank: int,
                      world_size: int, full_on_cpu: bool) -> None:
    """Fill this rank's shard `weight` of the parameter named `key`.

    With `full_on_cpu` the full tensor is drawn (layout independent) and this rank's slice
    copied in; otherwise the shard is drawn directly on its device, seeded from
    (seed, key, rank) so it still never depends on what was built before it.
    """
    with torch.no_grad():
        if full_on_cpu:
            full = layout_independent_init(full_shape, init_method, seed=seed, key=key)
            shard = split_along_dim_with_stride(full, partition_dim, world_size, rank, stride)
            weight.copy_(shard)
        elif weight.device.type == "cpu":
            local = torch.empty(weight.shape, dtype=torch.float32)
            _run_seeded_on_cpu(derive_seed(seed, f"{key}@tp{rank}"), init_method, local)
            weight.copy_(local)
        else:
            _run_seeded_on_accelerator(derive_seed(seed, f"{key}@tp{rank}"), init_method, weight)
