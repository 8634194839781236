"""What the training loop, its logging and its hooks share: the run's pieces, built once."""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from megatron.config.schema import TrainingConfig
from megatron.training.engine import StepResult
from megatron.training.log import TensorboardWriter
from megatron.training.train_state import TrainState


@dataclass
class RunContext:
    """Everything the loop needs, built once by `megatron.training.pretrain.build_run`."""

    config: TrainingConfig
    """The run's configuration, its model completed with the padded vocabulary."""
    engine: "object"
    scheduler: "object"
    state: TrainState
    iterators: "object"
    writer: Optional[TensorboardWriter] = None
    on_iteration_end: List[Callable[["RunContext"], bool]] = field(default_factory=list)
    """Hooks run after every iteration (checkpointing, exit conditions); True stops the run."""
    last_result: Optional[StepResult] = None
    """The latest iteration's step result (its grad norm and loss scale are logged)."""
    batch_sizes: Optional["object"] = None
    """The micro-batch calculator (`megatron.core.num_microbatches_calculator`): the global batch of the next
    iteration from the consumed samples (constant, or growing with --rampup-batch-size)."""
    checkpointer: Optional["object"] = None
    """The run's `megatron.checkpointing.Checkpointer` (saves only with --save)."""
    stop_reason: Optional[str] = None
    """Why a hook stopped the run early (an exit condition), or None."""
    profiler: Optional["object"] = None
    """The run's `megatron.training.profiler.StepProfiler` (--profile), or None."""

    def current_global_batch_size(self) -> int:
        """The global batch of the next iteration (grows with --rampup-batch-size)."""
        if self.batch_sizes is None:
            return self.config.batch.global_batch_size
        return self.batch_sizes.get_current_global_batch_size()
