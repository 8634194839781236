"""Loading a checkpoint file executes no code (one process): crafted pickles are refused with
one line naming the file and the global, the real files of upstream and of this project load,
the allow-list is set only around a load, and the tag stays inside --load."""
import argparse
import os
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from megatron.checkpointing import CheckpointError
from megatron.checkpointing.safe_load import (allow_checkpoint_contents, check_tag,
                                              deepspeed_loads_weights_only, load_file, plain_args,
                                              refuse_unsafe_files, unsafe_content)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


class ShellPayload:
    """Unpickling it runs `touch marker` through the shell (what an attacker would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TouchPayload:
    """Unpickling it creates `marker` without a shell (pathlib.Path.touch)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _write(path: Path, kind: str, marker: Path) -> Path:
    content = {"module": {"weight": torch.ones(2, 3)}, "iteration": 3}
    if kind == "shell":
        torch.save({**content, "args": ShellPayload(marker)}, path)
    elif kind == "touch":
        torch.save({**content, "args": TouchPayload(marker)}, path)
    elif kind == "protocol4":
        torch.save({**content, "args": ShellPayload(marker)}, path, pickle_protocol=4)
    elif kind == "legacy":
        torch.save({**content, "args": ShellPayload(marker)}, path,
                   _use_new_zipfile_serialization=False)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps(ShellPayload(marker), protocol=4))
    return path


PAYLOADS = {  # kind -> what the refusal names
    "shell": f"needs {os.system.__module__}.system, which is not on the allow-list",
    "touch": "needs builtins.getattr, which is not on the allow-list",
    "protocol4": "cannot be loaded as weights only (Unsupported operand 149)",
    "legacy": f"needs {os.system.__module__}.system, which is not on the allow-list",
    "plain pickle": "cannot be loaded as weights only (Unsupported operand 149)",
}


def test_the_payload_is_live(tmp_path):
    """Guards the tests below: unpickled without weights_only, the file creates the marker."""
    marker = tmp_path / "marker"
    torch.load(_write(tmp_path / "evil.pt", "touch", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_crafted_files_are_refused_with_one_line(tmp_path, kind):
    marker = tmp_path / "marker"
    path = _write(tmp_path / "mp_rank_00_model_states.pt", kind, marker)
    assert PAYLOADS[kind] in unsafe_content(str(path))
    with pytest.raises(CheckpointError) as raised:
        load_file(str(path))
    message = str(raised.value)
    assert message.startswith(f"checkpoint file {path} {PAYLOADS[kind]}")
    assert message.endswith("; refusing to load it") and "\n" not in message
    with pytest.raises(CheckpointError, match="refusing to load it"):
        refuse_unsafe_files(str(tmp_path), str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"PK\x03\x04 truncated", "cannot be read as a torch.save file"),
    (b"not a checkpoint" * 10, "cannot be loaded as weights only"),
])
def test_unreadable_file_is_refused_not_loaded(tmp_path, content, expected):
    (tmp_path / "rng_state_rank_00000.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as raised:
        refuse_unsafe_files("DIR", str(tmp_path))
    assert str(raised.value).startswith(
        f"--load DIR: checkpoint file {tmp_path / 'rng_state_rank_00000.pt'} {expected}")


def test_folder_check_names_the_first_bad_file_and_counts_the_rest(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"module": {"w": torch.zeros(1)}}, tmp_path / "mp_rank_00_model_states.pt")
    refuse_unsafe_files(str(tmp_path), str(tmp_path))  # a clean folder passes
    _write(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "shell", marker)
    _write(tmp_path / "rng_state_rank_00000.pt", "touch", marker)
    with pytest.raises(CheckpointError) as raised:
        refuse_unsafe_files("DIR", str(tmp_path))
    assert str(raised.value) == (
        f"--load DIR: checkpoint file {tmp_path / 'rng_state_rank_00000.pt'} needs "
        "builtins.getattr, which is not on the allow-list of checkpoint contents; refusing to "
        "load it (and 1 more file)")
    assert not marker.exists()


@pytest.mark.parametrize("folder", ["upstream/checkpoint_tp2/global_step5",
                                    "upstream/checkpoint_pp2/global_step5",
                                    "pre_restructure_checkpoint/global_step2"])
def test_real_checkpoints_of_upstream_and_of_this_project_load(folder):
    tag_dir = FIXTURES / folder
    files = sorted(tag_dir.glob("*.pt"))
    assert files
    refuse_unsafe_files(str(tag_dir.parent), str(tag_dir))
    for path in files:
        content = load_file(str(path))
        assert isinstance(content, dict) and content, path.name


def test_args_of_this_project_load_with_nothing_but_the_namespace_allowed(tmp_path):
    from megatron.arguments import parse_args

    args = parse_args(["--num-layers", "2"], defaults={"tokenizer_type": "GPT2BPETokenizer"})
    assert isinstance(args.explicit_args, frozenset)
    plain = plain_args(args)
    assert plain.explicit_args == ["num_layers"] and args.explicit_args == {"num_layers"}
    torch.save({"args": plain}, tmp_path / "args.pt")
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(tmp_path / "args.pt", weights_only=True)["args"]
    assert vars(loaded) == vars(plain)


def test_the_allow_list_is_set_only_inside_the_block():
    before = torch.serialization.get_safe_globals()
    mine = (argparse.Namespace, "argparse.Namespace")
    torch.serialization.add_safe_globals([mine])  # a caller's own entry survives the block
    try:
        with allow_checkpoint_contents():
            with allow_checkpoint_contents():
                pass
            assert (frozenset, "builtins.frozenset") in torch.serialization.get_safe_globals()
        after = torch.serialization.get_safe_globals()
        assert mine in after and (frozenset, "builtins.frozenset") not in after
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_deepspeed_reads_weights_only_during_the_load_only(tmp_path, monkeypatch):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "marker"
    evil = str(_write(tmp_path / "layer_01-model_00-model_states.pt", "touch", marker))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    original = TorchCheckpointEngine()
    engine = argparse.Namespace(checkpoint_engine=original)
    with deepspeed_loads_weights_only(engine):
        with pytest.raises(CheckpointError, match="needs builtins.getattr"):
            engine.checkpoint_engine.load(evil, map_location=None)
        # DeepSpeed code that calls torch.load(weights_only=False) itself loads weights only too.
        with pytest.raises(pickle.UnpicklingError):
            torch.load(evil, weights_only=False)
        assert engine.checkpoint_engine.is_data_parallel_writer(0)  # the rest is delegated
    assert engine.checkpoint_engine is original
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert not marker.exists()


@pytest.fixture
def load_dir(tmp_path):
    directory = tmp_path / "checkpoints"
    (directory / "global_step5").mkdir(parents=True)
    (directory / "custom" / "nested").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (directory / "global_step7").symlink_to(tmp_path / "elsewhere")
    (directory / "global_step8").symlink_to(directory / "global_step5")
    return directory


@pytest.mark.parametrize("tag", ["global_step5", "global_step8"])
def test_tags_from_latest_inside_the_folder_are_accepted(load_dir, tag):
    check_tag(str(load_dir), tag, source="latest", from_file=True)


@pytest.mark.parametrize("tag", ["custom/nested", "global_step5"])
def test_load_tag_may_name_any_folder_inside(load_dir, tag):
    check_tag(str(load_dir), tag, source="--load-tag", from_file=False)


@pytest.mark.parametrize("tag, from_file, expected", [
    ("../elsewhere", True, "which is not of the form global_stepN"),
    ("custom", True, "which is not of the form global_stepN"),
    ("global_step5/../../elsewhere", True, "which is not of the form global_stepN"),
    ("global_step7", True, "which is not a folder inside"),  # a symlink leading out
    ("../elsewhere", False, "which is not a folder inside"),
    ("/etc", False, "which is not a folder inside"),
    ("global_step5/../../elsewhere", False, "which is not a folder inside"),
    ("global_step7", False, "which is not a folder inside"),
    (".", False, "which is not a folder inside"),
    ("", False, "which is not a folder inside"),
])
def test_tags_leading_elsewhere_are_refused(load_dir, tag, from_file, expected):
    with pytest.raises(CheckpointError) as raised:
        check_tag(str(load_dir), tag, source="SOURCE", from_file=from_file)
    message = str(raised.value)
    assert message.startswith(f"--load {load_dir}: SOURCE names checkpoint {tag!r}, {expected}")
    assert "\n" not in message
