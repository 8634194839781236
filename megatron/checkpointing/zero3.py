"""What ZeRO stage 3 changes in loading: its weights exist only as partitions in its optimizer
files (`zero_pp_rank_*_optim_states.pt`), one model-states file per data-parallel rank holds
none of them."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from megatron.checkpointing.errors import CheckpointError
from megatron.checkpointing.layout import ParallelLayout, is_zero3_checkpoint
from megatron.checkpointing.safe_load import deepspeed_loads_weights_only


def check_zero3_compatible(load_dir: str, tag: str, *, zero_stage: int,
                           other_layout: Optional[ParallelLayout],
                           layout: Optional[ParallelLayout]) -> None:
    """Refuse what cannot load: a ZeRO-3 checkpoint into another ZeRO stage or the reverse
    (their files differ), and a ZeRO-3 checkpoint on another layout (`other_layout` not None:
    re-splitting reads whole weights, which ZeRO-3 never writes)."""
    saved_zero3 = is_zero3_checkpoint(os.path.join(load_dir, tag))
    if saved_zero3 != (zero_stage == 3):
        saved = "with ZeRO stage 3" if saved_zero3 else "with ZeRO stage 0, 1 or 2"
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} was saved {saved} and this run "
                              f"uses ZeRO stage {zero_stage} (--zero-stage); their files differ: "
                              "resume with the stage it was saved with")
    if saved_zero3 and other_layout is not None:
        raise CheckpointError(f"--load {load_dir}: checkpoint {tag} was saved with ZeRO stage 3 on "
                              f"{other_layout} and this run is {layout}: re-splitting ZeRO-3's "
                              "partitioned weights is not supported; resume on the saved layout")


def load_zero3_weights_only(engine: Any, load_dir: str, tag: str, *,
                            finetune: bool) -> Tuple[Optional[str], Dict[str, Any]]:
    """--no-load-optim / --finetune under ZeRO-3: the weights of step `tag` and a fresh optimizer.

    DeepSpeed's own weights-only load rebuilds the weights from the step that `latest` names,
    whatever the tag. So the whole step `tag` is loaded, then the optimizer forgets what it
    loaded: the Adam moments and step counts (the torch optimizer creates them again on its
    first step) and its hyper-parameters (the schedule's stay). Returns DeepSpeed's
    (path, client state).
    """
    base = engine.optimizer.optimizer
    hyper_parameters = [{key: value for key, value in group.items() if key != "params"}
                        for group in base.param_groups]
    with deepspeed_loads_weights_only(engine):
        path, client = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    base.state.clear()
    for group, saved in zip(base.param_groups, hyper_parameters):
        group.update(saved)
    if finetune:  # DeepSpeed's counters restart, as with its load_module_only
        engine.global_steps, engine.global_samples, engine.skipped_steps = 0, 0, 0
    return path, client
