"""Parameter initialization of the tensor-parallel layers.

Keyed (the layer was given `init_key`, the parameter's global name such as
"layers.3.mlp.dense_h_to_4h"): every parameter is drawn from its own generator, seeded
from a stable hash of the run's seed and that name. The draw therefore never depends on
what else this rank built before, and a model split with any tensor- or pipeline-parallel
layout holds exactly the slices of the single-rank model.

Keyless (`init_key=None`, how upstream code calls the layers): upstream's rule. With
`use_cpu_initialization` the full weight is drawn from the process's default CPU generator
and each rank keeps its slice, so every tensor-parallel size gets the same full weights for
the same `torch.manual_seed` and build order; otherwise each rank draws its shard on its
device under the model-parallel RNG stream (`model_parallel_cuda_manual_seed` first).
"""
import hashlib
from typing import Callable, Optional, Sequence

import torch

from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
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


def _full_weight(full_shape: Sequence[int], init_method: InitMethod, *, seed: int,
                 key: Optional[str]) -> torch.Tensor:
    if key is not None:
        return layout_independent_init(full_shape, init_method, seed=seed, key=key)
    full = torch.empty(tuple(full_shape), dtype=torch.float32)
    init_method(full)  # the default CPU generator, as upstream
    return full


def init_partitioned_(weight: torch.Tensor, *, full_shape: Sequence[int], partition_dim: int,
                      stride: int, init_method: InitMethod, seed: int, key: Optional[str],
                      rank: int, world_size: int, full_on_cpu: bool) -> Optional[torch.Tensor]:
    """Fill this rank's shard `weight` of the parameter named `key` (None: keyless, see
    the module docstring).

    With `full_on_cpu` the full tensor is drawn and this rank's slice copied in; the full
    tensor is returned (in the weight's dtype). Otherwise the shard is drawn directly on
    its device: keyed, seeded from (seed, key, rank) so it still never depends on what was
    built before it; keyless, under the model-parallel RNG stream. Returns None then.
    """
    with torch.no_grad():
        if full_on_cpu:
            full = _full_weight(full_shape, init_method, seed=seed, key=key).to(weight.dtype)
            weight.copy_(split_along_dim_with_stride(full, partition_dim, world_size, rank,
                                                     stride))
            return full
        if key is None:
            with get_cuda_rng_tracker().fork():
                init_method(weight)
        elif weight.device.type == "cpu":
            local = torch.empty(weight.shape, dtype=torch.float32)
            _run_seeded_on_cpu(derive_seed(seed, f"{key}@tp{rank}"), init_method, local)
            weight.copy_(local)
        else:
            _run_seeded_on_accelerator(derive_seed(seed, f"{key}@tp{rank}"), init_method, weight)
    return None
