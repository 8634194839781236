"""Mutable training progress, kept in one object and checkpointed with `state_dict()`."""
from dataclasses import asdict, dataclass, fields


@dataclass
class TrainState:
    """Where the run is: what upstream kept by mutating `args` mid-run."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    consumed_train_tokens: int = 0
    skipped_iterations: int = 0
    nan_iterations: int = 0
    # Non-finite losses in a row; the run stops when it reaches the configured limit.
    consecutive_nan_iterations: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        known = {field.name for field in fields(self)}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"unknown TrainState fields in checkpoint: {sorted(unknown)}")
        for name, value in state.items():
            setattr(self, name, int(value))
