"""Model-parallel RNG streams and activation checkpointing that replays them.

Dropout outside tensor-parallel regions must draw the same mask on every TP rank (the
default generator, seeded identically); dropout inside them must differ per rank (the
tracked "model-parallel-rng" stream, seeded with the TP rank). The historical names
(`get_cuda_rng_tracker`, `model_parallel_cuda_manual_seed`) are kept; on a CPU-only
machine the streams are the CPU generator's, otherwise the accelerator's.
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Tuple

import torch

from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_along_dim

_MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"
# Offset between the data-parallel seed and the tensor-parallel seeds (Megatron's value).
_TENSOR_PARALLEL_SEED_OFFSET = 2718


def _use_accelerator() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() != "cpu"


def _get_rng_state() -> torch.Tensor:
    if _use_accelerator():
        from deepspeed.accelerator import get_accelerator

        return get_accelerator().get_rng_state()
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor) -> None:
    if _use_accelerator():
        from deepspeed.accelerator import get_accelerator

        get_accelerator().set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _manual_seed(seed: int) -> None:
    """Seed only the generator the tracker manages."""
    if _use_accelerator():
        from deepspeed.accelerator import get_accelerator

        get_accelerator().manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class RNGStatesTracker:
    """Named RNG states that can be swapped in around a block of code."""

    def __init__(self) -> None:
        self.states_: Dict[str, torch.Tensor] = {}
        self.seeds_: set = set()

    def reset(self) -> None:
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> Dict[str, torch.Tensor]:
        """A copy of the name -> state mapping (states are tensors, copied too)."""
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        """Register stream `name` started from `seed` (both must be new)."""
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} is already registered")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} is already registered")
        self.seeds_.add(seed)
        original = _get_rng_state()
        try:
            _manual_seed(seed)
            self.states_[name] = _get_rng_state()
        finally:
            _set_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        """Run the block on stream `name`, then store its advanced state and restore ours."""
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} is not registered "
                           "(call model_parallel_cuda_manual_seed first)")
        original = _get_rng_state()
        _set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = _get_rng_state()
            _set_rng_state(original)


_OWN_RNG_TRACKER = RNGStatesTracker()
_RNG_TRACKER = _OWN_RNG_TRACKER


def get_cuda_rng_tracker() -> RNGStatesTracker:
    """The process-wide tracker (CPU or accelerator generator, see module doc)."""
    return _RNG_TRACKER


def use_deepspeed_rng_tracker() -> None:
    """Make DeepSpeed's tracker the process-wide one (same interface and stream names).

    `deepspeed.checkpointing.checkpoint` saves and restores only its own tracker around a
    recompute, so with DeepSpeed activation checkpointing every dropout must draw from it.
    Seed afterwards (`model_parallel_cuda_manual_seed`).
    """
    global _RNG_TRACKER
    from deepspeed.runtime.activation_checkpointing import checkpointing

    _RNG_TRACKER = checkpointing.get_cuda_rng_tracker()


def use_own_rng_tracker() -> None:
    """Undo `use_deepspeed_rng_tracker` (tests that build several models in one process)."""
    global _RNG_TRACKER
    _RNG_TRACKER = _OWN_RNG_TRACKER


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the default stream with `seed` (same on all TP ranks) and the model-parallel
    stream with `seed + 2718 + tp_rank` (different on each TP rank)."""
    tensor_parallel_seed = (seed + _TENSOR_PARALLEL_SEED_OFFSET
                            + parallel_state.get_tensor_model_parallel_rank())
    _RNG_TRACKER.reset()
    _manual_seed(seed)
    _RNG_TRACKER.add(_MODEL_PARALLEL_RNG_TRACKER_NAME, tensor_parallel_seed)


def _split_for_this_rank(tensor: torch.Tensor) -> torch.Tensor:
    world_size = parallel_state.get_tensor_model_parallel_world_size()
    flat = tensor.detach().reshape(-1)
    if flat.numel() % world_size:
        raise ValueError(f"distribute_saved_activations needs the input size {flat.numel()} "
                         f"to be divisible by the tensor-parallel size {world_size}")
    chunk = flat.numel() // world_size
    rank = parallel_state.get_tensor_model_parallel_rank()
    return flat[rank * chunk:(rank + 1) * chunk].clone()


class CheckpointFunction(torch.autograd.Function):
    """Run `function` without keeping activations; rerun it in backward under the same
    default and tracker RNG states so dropout masks repeat exactly."""

    @staticmethod
    def forward(ctx, function: Callable, distribute_saved_activations: bool, *args: Any):
        ctx.function = function
        ctx.distribute_saved_activations = distribute_saved_activations
        ctx.fwd_rng_state = _get_rng_state()
        ctx.fwd_tracker_states = _RNG_TRACKER.get_states()
        with torch.no_grad():
            outputs = function(*args)
        tensor_positions = [i for i, arg in enumerate(args) if torch.is_tensor(arg)]
        ctx.tensor_positions = tensor_positions
        ctx.inputs = [None if torch.is_tensor(arg) else arg for arg in args]
        saved = [args[i].detach() for i in tensor_positions]
        ctx.first_shape = None
        if distribute_saved_activations and tensor_positions:
            # Keep only this rank's 1/TP of the first tensor input; regathered in backward.
            ctx.first_shape = saved[0].shape
            saved[0] = _split_for_this_rank(saved[0])
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor) -> Tuple[Any, ...]:
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("checkpoint() does not support torch.autograd.grad; use .backward()")
        saved = list(ctx.saved_tensors)
        if ctx.first_shape is not None:
            saved[0] = gather_along_dim(saved[0], 0).view(ctx.first_shape)
        inputs = list(ctx.inputs)
        for position, tensor in zip(ctx.tensor_positions, saved):
            detached = tensor.detach()
            detached.requires_grad_(ctx.needs_input_grad[position + 2])
            inputs[position] = detached
        bwd_rng_state = _get_rng_state()
        bwd_tracker_states = _RNG_TRACKER.get_states()
        _set_rng_state(ctx.fwd_rng_state)
        _RNG_TRACKER.set_states(ctx.fwd_tracker_states)
        try:
            with torch.enable_grad():
                outputs = ctx.function(*inputs)
        finally:
            _set_rng_state(bwd_rng_state)
            _RNG_TRACKER.set_states(bwd_tracker_states)
        if torch.is_tensor(outputs):
            outputs = (outputs,)
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs)
                 if torch.is_tensor(out) and out.requires_grad]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        grads = [inputs[i].grad if torch.is_tensor(inputs[i]) else None
                 for i in range(len(inputs))]
        return (None, None) + tuple(grads)


def checkpoint(function: Callable, distribute_saved_activations: bool, *args: Any) -> Any:
    """Activation checkpointing: `function(*args)` is recomputed during backward.

    With `distribute_saved_activations` the saved first input is split across the
    tensor-parallel ranks (each keeps 1/TP) and gathered back for the recomputation.
    """
    return CheckpointFunction.apply(function, distribute_saved_activations, *args)
