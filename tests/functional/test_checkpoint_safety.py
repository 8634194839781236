"""--load executes no code from a checkpoint, through the real program.

One checkpoint per engine is saved once (ZeRO engine in bf16, pipeline engine in fp32, one
process, iteration 1); each case corrupts a copy: a crafted pickle whose unpickling would create
a marker file replaces one file (model states with and without this project's manifest, a ZeRO
shard, an RNG file, a pipeline layer file), or `latest` points out of the folder. Every case must
end with one error line naming the file and the global, exit code 1, and no marker file. The same
checkpoints, untouched, still resume. Once with two ranks: a file only rank 1 would read stops
both ranks (no rank left waiting in a collective).
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from megatron.checkpointing import MANIFEST_FILE, load_file
from tests.functional.launch import (losses_by_iteration, run_pretrain, run_pretrain_refused,
                                     tiny_gpt_args, write_random_dataset)

pytestmark = pytest.mark.slow

ENGINES = {"zero": ["--no-pipeline-parallel", "--bf16"], "pipe": []}


class ShellPayload:
    """Unpickling it runs `touch marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("safety-data") / "random_text_document")


def _args(dataset, engine, *extra, iterations=3):
    return tiny_gpt_args(dataset, train_iters=iterations, extra=[*ENGINES[engine], *extra])


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory):
    """engine -> a folder holding that engine's checkpoint of iteration 1."""
    folders = {}
    for engine in ENGINES:
        folder = tmp_path_factory.mktemp(f"saved-{engine}") / "checkpoints"
        run_pretrain(_args(dataset, engine, "--save", str(folder), "--save-interval", "1",
                           "--exit-interval", "1"))
        assert (folder / "latest").read_text() == "global_step1"
        folders[engine] = folder
    return folders


def _corrupted_copy(saved_folder: Path, tmp_path: Path, victim: str, *, marker: Path,
                    keep_manifest: bool = True) -> Path:
    """A copy of the checkpoint whose `victim` also holds the payload; the manifest (if kept)
    is brought up to date, as an attacker would."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(saved_folder, folder)
    tag_dir = folder / "global_step1"
    import torch

    path = tag_dir / victim
    content = load_file(str(path)) if path.exists() else {}
    content["payload"] = ShellPayload(marker)
    torch.save(content, path)
    manifest = tag_dir / MANIFEST_FILE
    if not keep_manifest:
        manifest.unlink()
    else:
        _refresh_manifest(manifest)
    return folder


def _refresh_manifest(path: Path) -> None:
    """Sizes (and any checksums) of the manifest's files as they are now."""
    from megatron.checkpointing import integrity

    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        file = path.parent / name
        if isinstance(entry, int):
            manifest["files"][name] = file.stat().st_size
        elif isinstance(entry, dict):
            for key in entry:
                if key == "size":
                    entry[key] = file.stat().st_size
                elif "checksum" in key or "crc" in key:
                    entry[key] = integrity.file_checksum(str(file))
    for key in manifest:
        if "checksum" in key and isinstance(manifest[key], dict):
            manifest[key] = {name: integrity.file_checksum(str(path.parent / name))
                             for name in manifest[key]}
    path.write_text(json.dumps(manifest, indent=1))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_checkpoints_of_this_project_still_load(dataset, saved, engine):
    output = run_pretrain(_args(dataset, engine, "--load", str(saved[engine]),
                                "--exit-interval", "2"))
    assert "loaded checkpoint global_step1" in output
    assert sorted(losses_by_iteration(output)) == [2]


@pytest.mark.parametrize("engine, victim, keep_manifest", [
    ("zero", "mp_rank_00_model_states.pt", True),
    ("zero", "mp_rank_00_model_states.pt", False),  # like an upstream folder
    ("zero", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", True),
    ("zero", "rng_state_rank_00000.pt", True),
    ("pipe", "layer_02-model_00-model_states.pt", True),
], ids=["model-states", "model-states-no-manifest", "zero-shard", "rng", "pipeline-layer"])
def test_crafted_file_is_refused_before_it_runs(dataset, saved, tmp_path, engine, victim,
                                                keep_manifest):
    marker = tmp_path / "marker"
    folder = _corrupted_copy(saved[engine], tmp_path, victim, marker=marker,
                             keep_manifest=keep_manifest)
    code, errors, output = run_pretrain_refused(_args(dataset, engine, "--load", str(folder)))
    assert code == 1, output[-4000:]
    assert errors == [
        f"pretrain_gpt.py: error: --load {folder}: checkpoint file "
        f"{folder / 'global_step1' / victim} needs {os.system.__module__}.system, which is not on "
        "the allow-list of checkpoint contents; refusing to load it"], output[-3000:]
    assert not marker.exists()


def test_latest_pointing_outside_the_folder_is_refused(dataset, saved, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(saved["zero"], folder)
    shutil.copytree(folder / "global_step1", tmp_path / "elsewhere")
    (folder / "latest").write_text("../elsewhere")
    code, errors, output = run_pretrain_refused(_args(dataset, "zero", "--load", str(folder)))
    assert code == 1, output[-4000:]
    assert errors == [
        f"pretrain_gpt.py: error: --load {folder}: {folder}/latest names checkpoint "
        "'../elsewhere', which is not of the form global_stepN; pass --load-tag to load another "
        "folder"], output[-3000:]


def test_a_file_only_one_rank_reads_stops_every_rank(dataset, saved, tmp_path):
    marker = tmp_path / "marker"
    # Loaded by two ranks, rank 1 alone reads (and checks) rank 1's RNG file.
    folder = _corrupted_copy(saved["zero"], tmp_path, "rng_state_rank_00001.pt", marker=marker)
    code, errors, output = run_pretrain_refused(_args(dataset, "zero", "--load", str(folder),
                                              "--no-load-optim"), num_procs=2)
    expected = (f"pretrain_gpt.py: error: --load {folder}: checkpoint file "
                f"{folder / 'global_step1' / 'rng_state_rank_00001.pt'} needs "
                f"{os.system.__module__}.system, which is not on the allow-list of checkpoint "
                "contents; refusing to load it")
    assert errors == [expected, expected], output[-3000:]
    assert not marker.exists()
