"""Every random generator a rank draws from, captured for a checkpoint and restored on resume.

One file per global rank: DeepSpeed writes client state only from data-parallel rank 0, but
dropout and the tensor-parallel RNG tracker differ on every rank.
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch



def capture_rng_states() -> Dict[str, Any]:
    """Every generator training draws from on this rank."""
    from deepspeed.accelerator import get_accelerator

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    accelerator = get_accelerator()
    states = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": get_cuda_rng_tracker().get_states(),
    }
    if accelerator.device_name() != "cpu":
        states["cuda_rng_state"] = accelerator.get_rng_state()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    from deepspeed.accelerator import get_accelerator

    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    accelerator = get_accelerator()
    random.setstate(states["random_rng_state"])
    np.random.set_state(states["np_rng_state"])
    torch.set_rng_state(states["torch_rng_state"])
    if "cuda_rng_state" in states and accelerator.device_name() != "cpu":
        accelerator.set_rng_state(states["cuda_rng_state"])
    get_cuda_rng_tracker().set_states(states["rng_tracker_states"])
