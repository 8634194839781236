"""Process start-up: the distributed backend, the parallel groups and the random seeds."""
import datetime
import os
import random
import socket

import numpy as np
import torch

from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

# Upstream offsets the seed per pipeline stage so stages do not draw identical dropout masks.
_PIPELINE_STAGE_SEED_OFFSET = 100


def _single_process_defaults() -> None:
    """Let `python pretrain_gpt.py ...` run as a world of one without a launcher."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


def initialize_distributed(*, tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
                           ds_sequence_parallel_size: int = 1, timeout_minutes: int = 10,
                           backend: str = None) -> None:
    """Start torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU) and build the groups."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    _single_process_defaults()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend or accelerator.communication_backend_name(),
                                   auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(minutes=timeout_minutes))
        _unlink_shared_memory_segment(accelerator.device_name())
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size,
                                                 pipeline_model_parallel_size,
                                                 ds_sequence_parallel_size)


def _unlink_shared_memory_segment(device_name: str) -> None:
    """Remove this rank's name of DeepSpeed's CPU all-reduce segment once every rank has mapped
    it. DeepSpeed creates one 64 MiB /dev/shm segment per rank when all ranks share a machine
    (its launcher sets LOCAL_SIZE) and never unlinks it: every run, even one that ends cleanly,
    would leave its segments in memory-backed /dev/shm. The mappings stay valid after unlink."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if device_name != "cpu" or os.environ.get("LOCAL_SIZE") != world_size:
        return
    torch.distributed.barrier()  # every rank has opened every other rank's segment by now
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{torch.distributed.get_rank()}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # DeepSpeed without its shared-memory op, or not on Linux
        pass


def set_random_seeds(seed: int) -> None:
    """Seed python, numpy, torch and the model-parallel RNG tracker, as upstream does."""
    if seed <= 0:
        raise ValueError(f"--seed must be a positive integer, got {seed}")
    stage_seed = seed + _PIPELINE_STAGE_SEED_OFFSET * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed)
