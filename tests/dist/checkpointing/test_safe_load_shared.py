"""A bad file that only one rank checks is refused on every rank, with the same line."""
import os

import torch

from tests.harness import run_on_ranks


class _ShellPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _refusal_on_this_rank(load_dir, tag_dir):
    from megatron.checkpointing import CheckpointError
    from megatron.checkpointing.safe_load import refuse_unsafe_files

    try:
        refuse_unsafe_files(load_dir, tag_dir)
    except CheckpointError as error:
        return str(error)
    return None


def test_every_rank_refuses_what_one_rank_found(tmp_path):
    marker = tmp_path / "marker"
    tag_dir = tmp_path / "global_step1"
    tag_dir.mkdir()
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"w": torch.zeros(1)}, tag_dir / name)
    # The second of the three sorted files: rank 1 checks it, rank 0 never reads it.
    torch.save({"state": _ShellPayload(marker)}, tag_dir / "rng_state_rank_00000.pt")
    results = run_on_ranks(_refusal_on_this_rank, str(tmp_path), str(tag_dir), world_size=2,
                           timeout=60)
    expected = (f"--load {tmp_path}: checkpoint file {tag_dir / 'rng_state_rank_00000.pt'} needs "
                f"{os.system.__module__}.system, which is not on the allow-list of checkpoint "
                "contents; refusing to load it")
    assert results == [expected, expected]
    assert not marker.exists()
