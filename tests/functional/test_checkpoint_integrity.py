"""Damaged checkpoint files are caught at --load through the real program: a flipped byte
(checksum), a truncated file (size), with the newest intact step named; --no-verify-checkpoint
skips the checksums; an intact step loads and says it was verified."""
import json
import shutil
from pathlib import Path

import pytest

from megatron.checkpointing import MANIFEST_FILE
from tests.functional.launch import (losses_by_iteration, run_pretrain, run_pretrain_refused,
                                     tiny_gpt_args, write_random_dataset)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("integrity-data") / "random_text_document")


def _args(dataset, *extra):
    return tiny_gpt_args(dataset, train_iters=3, extra=["--no-pipeline-parallel", *extra])


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory):
    """global_step1 and global_step2 of one run (latest = global_step2)."""
    directory = tmp_path_factory.mktemp("integrity") / "checkpoints"
    run_pretrain(_args(dataset, "--save", str(directory), "--save-interval", "1",
                       "--exit-interval", "2"))
    return directory


def _copy(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(saved, copy)
    return copy


def _largest_file(tag_dir: Path) -> Path:
    return max((p for p in tag_dir.iterdir() if p.name != MANIFEST_FILE),
               key=lambda p: p.stat().st_size)


def test_an_intact_step_is_verified_and_loads(dataset, saved):
    output = run_pretrain(_args(dataset, "--load", str(saved)))
    assert "loaded checkpoint global_step2" in output and "checksums verified in" in output
    assert sorted(losses_by_iteration(output)) == [3]


def test_a_flipped_byte_is_refused_naming_the_file_and_the_intact_step(dataset, saved, tmp_path):
    copy = _copy(saved, tmp_path)
    victim = _largest_file(copy / "global_step2")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10  # same size: only the checksum can tell
    victim.write_bytes(bytes(data))
    code, errors, _ = run_pretrain_refused(_args(dataset, "--load", str(copy)))
    assert code == 1 and len(errors) == 1
    assert f"checkpoint global_step2 is damaged: {victim} (checksum crc32c:" in errors[0]
    assert "the newest intact checkpoint there is global_step1 (pass --load-tag global_step1)" \
        in errors[0]


def test_a_truncated_file_is_refused_naming_the_intact_step(dataset, saved, tmp_path):
    copy = _copy(saved, tmp_path)
    victim = _largest_file(copy / "global_step2")
    victim.write_bytes(victim.read_bytes()[:-100])
    code, errors, _ = run_pretrain_refused(_args(dataset, "--load", str(copy)))
    assert code == 1 and len(errors) == 1
    assert f"{victim} (size" in errors[0]
    assert "the newest intact checkpoint there is global_step1 (pass --load-tag global_step1)" \
        in errors[0]


def test_no_verify_checkpoint_skips_the_checksums(dataset, saved, tmp_path):
    copy = _copy(saved, tmp_path)
    manifest_path = copy / "global_step2" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    name = sorted(manifest["checksums"])[0]
    manifest["checksums"][name] = "crc32c:00000000"  # a wrong record, the file itself is fine
    manifest_path.write_text(json.dumps(manifest))
    _, errors, _ = run_pretrain_refused(_args(dataset, "--load", str(copy)))
    assert errors and "is damaged" in errors[0]
    output = run_pretrain(_args(dataset, "--load", str(copy), "--no-verify-checkpoint"))
    assert "checksums not verified: --no-verify-checkpoint" in output
    assert sorted(losses_by_iteration(output)) == [3]
