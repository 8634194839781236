"""Bad input ends every rank within seconds with one line, a non-zero exit and no file changed.

The catalogue is docs/errors.md. Ranks are started here directly (RANK/WORLD_SIZE/MASTER_PORT
set as a launcher would), so that each rank's exit code and stderr are seen: under torchrun the
first rank to fail gets the others SIGTERMed before they print. Inputs refused before any
process group exists (flags, DeepSpeed JSON, tokenizer and data files) run many to a process
(bad_input_entry.py) on 2 and on 4 ranks; the few found after the rendezvous (index caches,
--load, the port) get a launch each. Expected lines are written out here.
"""
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import pytest

from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder
from tests import processes
from tests.functional.launch import (REPO_ROOT, free_port, run_pretrain_refused, tiny_gpt_args,
                                     write_random_dataset)

pytestmark = pytest.mark.slow

ERROR = "pretrain_gpt.py: error: "
SECONDS = 30  # every rank gone within this (gloo's default timeout is 10 minutes)
ENTRY = Path(__file__).with_name("bad_input_entry.py")
MARKER = "bad-input-result "


class Rank(NamedTuple):
    code: int
    errors: List[str]
    output: str


def launch_ranks(command_args: Sequence[str], num_procs: int, *, script: Path = REPO_ROOT / "pretrain_gpt.py",
                 port: int = 0, timeout: float = 120) -> Tuple[List[Rank], float]:
    """`script` on `num_procs` ranks started as a launcher would start them; every rank's exit
    code, error lines and output, and the seconds until the last one ended."""
    port = port or free_port()
    logs, started = [], []
    start = time.monotonic()
    try:
        for rank in range(num_procs):
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RANK=str(rank),
                       LOCAL_RANK=str(rank), WORLD_SIZE=str(num_procs),
                       LOCAL_WORLD_SIZE=str(num_procs), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
            log = open(_log_path(rank), "w+")
            logs.append(log)
            started.append(processes.start([sys.executable, str(script), *command_args],
                                           cwd=REPO_ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))
        for process in started:
            process.wait(timeout=max(0.1, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        elapsed = time.monotonic() - start
        for process in started:
            processes.kill_group(process)
    ranks = []
    for process, log in zip(started, logs):
        log.seek(0)
        output = log.read()
        log.close()
        errors = [line for line in output.splitlines() if line.startswith(ERROR)]
        ranks.append(Rank(process.returncode, errors, output))
    return ranks, elapsed


_LOG_DIR: List[Path] = []


def _log_path(rank: int) -> Path:
    return _LOG_DIR[0] / f"rank{rank}.log"


@pytest.fixture(autouse=True)
def _logs(tmp_path_factory):
    """Rank logs go to a folder of their own, outside the folders compared before and after."""
    _LOG_DIR[:] = [tmp_path_factory.mktemp("rank-logs")]


def snapshot(*folders: Path) -> Dict[str, str]:
    """Every file under `folders` with the md5 of its content (folders listed too)."""
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            found[str(path)] = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


# ---------------------------------------------------------------------------------------------
# Inputs


def _copy_dataset(source: str, prefix: Path) -> str:
    for ext in (".bin", ".idx"):
        shutil.copyfile(source + ext, str(prefix) + ext)
    return str(prefix)


def _patch(path: str, offset: int, data: bytes) -> None:
    content = bytearray(Path(path).read_bytes())
    content[offset:offset + len(data)] = data
    Path(path).write_bytes(bytes(content))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """One good dataset and the bad files of the catalogue, in one folder."""
    root = tmp_path_factory.mktemp("bad-inputs")
    good = write_random_dataset(root / "data")
    count = struct.unpack("<Q", Path(good + ".idx").read_bytes()[18:26])[0]
    _patch(_copy_dataset(good, root / "magic") + ".idx", 0, b"NOTMAGIC!")
    _patch(_copy_dataset(good, root / "version") + ".idx", 9, struct.pack("<Q", 3))
    _patch(_copy_dataset(good, root / "dtype") + ".idx", 17, bytes([12]))
    # Document 5 points a gigabyte into a .bin of some 40 kB.
    _patch(_copy_dataset(good, root / "pointer") + ".idx", 34 + 4 * count + 8 * 5,
           struct.pack("<q", 10 ** 9))
    truncated = _copy_dataset(good, root / "truncated") + ".bin"
    Path(truncated).write_bytes(Path(truncated).read_bytes()[:20000])
    MMapIndexedDatasetBuilder(str(root / "empty.bin"), dtype=np.uint16).finalize(
        str(root / "empty.idx"))
    (root / "only.idx").write_bytes(Path(good + ".idx").read_bytes())  # its .bin is missing
    (root / "ds_bad.json").write_text('{"train_batch_size": 8,')
    (root / "ds_list.json").write_text("[8]")
    (root / "ds_conflict.json").write_text(json.dumps({"train_batch_size": 32}))
    (root / "ds_typo.json").write_text(json.dumps({"zero_optimisation": {"stage": 1}}))
    (root / "ds_optimizer.json").write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    (root / "ds_stage.json").write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    (root / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}')
    (root / "merges.txt").write_text("#version: 0.2\na b\n")
    (root / "bad_vocab.json").write_text("{not json")
    (root / "bad_merges.txt").write_text("#version: 0.2\na b c d\n")
    (root / "bad.model").write_bytes(b"this is not a sentencepiece model" * 8)
    (root / "bad_tokenizer.json").write_text("{not json")
    (root / "a_file").write_text("a file where a folder should be")
    return root


def _base(dataset: str, *extra: str) -> List[str]:
    return tiny_gpt_args(dataset, train_iters=3, extra=["--no-pipeline-parallel", *extra])


def _gpt2(root: Path, vocab: str = "vocab.json", merges: str = "merges.txt") -> List[str]:
    return ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(root / vocab),
            "--merge-file", str(root / merges)]


# (name, extra flags given the inputs folder, expected exit code, expected line given the folder)
# All refused before any process group exists: run many to a process on 2 and on 4 ranks.
EARLY = [
    ("hidden-not-divisible", lambda d: ["--hidden-size", "62"], 2,
     lambda d: "--hidden-size 62 (hidden_size) must be divisible by --num-attention-heads 4 "
               "(num_attention_heads) unless --kv-channels (kv_channels) is given"),
    ("world-not-divisible", lambda d: ["--tensor-model-parallel-size", "3"], 2,
     lambda d: "world size {world} is not divisible by --tensor-model-parallel-size 3 x "
               "--pipeline-model-parallel-size 1"),
    ("fp16-and-bf16", lambda d: ["--fp16", "--bf16"], 2,
     lambda d: "--fp16 and --bf16 are mutually exclusive"),
    ("negative-lr", lambda d: ["--lr", "-1"], 2,
     lambda d: "need 0 <= --min-lr (0.0001) <= --lr (-1.0)"),
    ("zero-micro-batch", lambda d: ["--micro-batch-size", "0"], 2,
     lambda d: "--micro-batch-size must be positive, got 0"),
    ("global-batch-not-multiple", lambda d: ["--global-batch-size", "7"], 2,
     lambda d: "--global-batch-size 7 must be a positive multiple of --micro-batch-size 2 "
               "times the data-parallel size {world}"),
    ("iters-and-samples", lambda d: ["--train-samples", "100"], 2,
     lambda d: "--train-iters and --train-samples are mutually exclusive; give only one"),
    ("seq-beyond-positions", lambda d: ["--seq-length", "64"], 2,
     lambda d: "--seq-length 64 exceeds --max-position-embeddings 32"),
    ("unknown-tokenizer-type", lambda d: ["--tokenizer-type", "Foo"], 2,
     lambda d: "argument --tokenizer-type: invalid choice: 'Foo' (choose from "
               "'BertWordPieceLowerCase', 'BertWordPieceCase', 'GPT2BPETokenizer', "
               "'SentencePieceTokenizer', 'GPTSentencePieceTokenizer', 'HFTokenizer', "
               "'NullTokenizer') (--help lists the flags)"),
    ("unknown-lr-decay-style", lambda d: ["--lr-decay-style", "exponential"], 2,
     lambda d: "argument --lr-decay-style: invalid choice: 'exponential' (choose from "
               "'constant', 'linear', 'cosine', 'inverse-square-root') (--help lists the flags)"),
    ("unknown-optimizer", lambda d: ["--optimizer", "rmsprop"], 2,
     lambda d: "argument --optimizer: invalid choice: 'rmsprop' (choose from 'adam', 'sgd') "
               "(--help lists the flags)"),
    ("not-a-number", lambda d: ["--hidden-size", "abc"], 2,
     lambda d: "argument --hidden-size: invalid int value: 'abc' (--help lists the flags)"),
    ("unknown-flag", lambda d: ["--no-such-flag"], 2,
     lambda d: "unrecognized arguments: --no-such-flag (--help lists the flags)"),
    ("json-malformed", lambda d: ["--deepspeed_config", f"{d}/ds_bad.json"], 2,
     lambda d: f"--deepspeed_config {d}/ds_bad.json is not valid JSON: Expecting property name "
               "enclosed in double quotes: line 1 column 24 (char 23)"),
    ("json-not-an-object", lambda d: ["--deepspeed_config", f"{d}/ds_list.json"], 2,
     lambda d: f"--deepspeed_config {d}/ds_list.json must hold a JSON object, got list"),
    ("json-missing", lambda d: ["--deepspeed_config", f"{d}/nope.json"], 2,
     lambda d: f"--deepspeed_config {d}/nope.json: no such file"),
    ("json-conflicts-with-flag", lambda d: ["--deepspeed_config", f"{d}/ds_conflict.json"], 2,
     lambda d: f"--global-batch-size 8 disagrees with \"train_batch_size\": 32 in "
               f"--deepspeed_config {d}/ds_conflict.json; make them equal or drop one of them"),
    ("json-zero-stage-conflict", lambda d: ["--deepspeed_config", f"{d}/ds_stage.json"], 2,
     lambda d: f"--zero-stage 1 disagrees with \"zero_optimization.stage\": 0 in "
               f"--deepspeed_config {d}/ds_stage.json; make them equal or drop one of them"),
    ("json-unknown-section", lambda d: ["--deepspeed_config", f"{d}/ds_typo.json"], 2,
     lambda d: f"\"zero_optimisation\" in --deepspeed_config {d}/ds_typo.json: not a DeepSpeed "
               "section (DeepSpeed would ignore it); check the spelling"),
    ("json-optimizer-section", lambda d: ["--deepspeed_config", f"{d}/ds_optimizer.json"], 2,
     lambda d: f"\"optimizer\" in --deepspeed_config {d}/ds_optimizer.json is not allowed: the "
               "optimizer is built from --optimizer/--lr/--adam-*/--weight-decay and passed to "
               "deepspeed.initialize, which would silently ignore this section; remove it"),
    ("weights-do-not-parse", lambda d: ["--data-path", "0.5", f"{d}/data", "abc", f"{d}/data"], 2,
     lambda d: "--data-path: 'abc' is not a non-negative weight (expected weight/prefix pairs)"),
    ("weights-without-prefix", lambda d: ["--data-path", "0.5", f"{d}/data", "0.5"], 2,
     lambda d: "--data-path with several datasets takes weight/prefix pairs; got 3 values"),
    ("save-under-a-file", lambda d: ["--save", f"{d}/a_file/checkpoints", "--save-interval", "1"],
     2, lambda d: f"--save {d}/a_file/checkpoints: {d}/a_file is a file, not a folder"),
    ("load-is-a-file", lambda d: ["--load", f"{d}/a_file"], 2,
     lambda d: f"--load {d}/a_file: a file, not a checkpoint folder"),
    # Files: read before the rendezvous, exit code 1.
    ("data-prefix-missing", lambda d: ["--data-path", f"{d}/nope"], 1,
     lambda d: f"--data-path {d}/nope: {d}/nope.bin/.idx not found"),
    ("data-bin-missing", lambda d: ["--data-path", f"{d}/only"], 1,
     lambda d: f"--data-path {d}/only: {d}/only.bin/.idx not found"),
    ("idx-wrong-magic", lambda d: ["--data-path", f"{d}/magic"], 1,
     lambda d: f"{d}/magic.idx: unrecognised magic b'NOTMAGIC!'"),
    ("idx-wrong-version", lambda d: ["--data-path", f"{d}/version"], 1,
     lambda d: f"{d}/version.idx: unsupported index version 3 (expected 1)"),
    ("idx-wrong-dtype", lambda d: ["--data-path", f"{d}/dtype"], 1,
     lambda d: f"{d}/dtype.idx: unknown dtype code 12"),
    ("idx-pointer-beyond-bin", lambda d: ["--data-path", f"{d}/pointer"], 1,
     lambda d: f"{d}/pointer.bin: data file is 42416 bytes but {d}/pointer.idx describes "
               "1000000050"),
    ("bin-truncated", lambda d: ["--data-path", f"{d}/truncated"], 1,
     lambda d: f"{d}/truncated.bin: data file is 20000 bytes but {d}/truncated.idx describes "
               "42416"),
    ("dataset-empty", lambda d: ["--data-path", f"{d}/empty"], 1,
     lambda d: f"--data-path {d}/empty: {d}/empty.idx holds no documents"),
    ("split-leaves-train-empty", lambda d: ["--split", "0,100,0"], 1,
     lambda d: f"--split 0,100,0 leaves no training documents in --data-path {d}/data "
               "(300 documents); give train a larger share"),
    ("split-not-numbers", lambda d: ["--split", "90,x,5"], 2,
     lambda d: "--split '90,x,5' must be comma-separated numbers, e.g. 949,50,1"),
    ("vocab-missing", lambda d: _gpt2(d, vocab="nope.json"), 1,
     lambda d: f"--vocab-file {d}/nope.json: file not found"),
    ("vocab-malformed", lambda d: _gpt2(d, vocab="bad_vocab.json"), 1,
     lambda d: f"--vocab-file {d}/bad_vocab.json: not a GPT-2 vocabulary (JSON object of token "
               "to id): Expecting property name enclosed in double quotes: line 1 column 2 "
               "(char 1)"),
    ("merges-malformed", lambda d: _gpt2(d, merges="bad_merges.txt"), 1,
     lambda d: f"--merge-file {d}/bad_merges.txt:2: expected two tokens, got 'a b c d'"),
    ("sentencepiece-malformed",
     lambda d: ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", f"{d}/bad.model"],
     1, lambda d: f"--tokenizer-model {d}/bad.model: not a SentencePiece model (INTERNAL: could "
                  f"not parse ModelProto from {d}/bad.model)"),
    ("sentencepiece-missing",
     lambda d: ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model",
                f"{d}/nope.model"],
     1, lambda d: f"--tokenizer-model {d}/nope.model: file not found"),
    ("hf-tokenizer-malformed",
     lambda d: ["--tokenizer-type", "HFTokenizer", "--tokenizer-model", f"{d}/bad_tokenizer.json"],
     1, lambda d: f"--tokenizer-model {d}/bad_tokenizer.json: not a Hugging Face tokenizer.json "
                  "(key must be a string at line 1 column 2)"),
]


@pytest.mark.parametrize("num_procs", [2, 4])
def test_early_refusals_end_every_rank_with_one_line(inputs, num_procs, tmp_path):
    cases = [_base(str(inputs / "data"), *extra(inputs)) for _, extra, _, _ in EARLY]
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    before = snapshot(inputs)
    ranks, elapsed = launch_ranks([str(cases_file)], num_procs, script=ENTRY)
    assert snapshot(inputs) == before
    assert elapsed < SECONDS + len(cases), f"{elapsed:.1f} s"
    for rank, result in enumerate(ranks):
        assert result.code == 0, result.output[-3000:]
        results = [json.loads(line[len(MARKER):]) for line in result.output.splitlines()
                   if line.startswith(MARKER)]
        assert len(results) == len(cases), result.output[-3000:]
        wrong = [(name, got["code"], got["stderr"])
                 for (name, _, code, line), got in zip(EARLY, results)
                 if (got["code"], got["stderr"]) != (code, ERROR + line(inputs).format(
                     world=num_procs) + "\n")]
        assert not wrong, (rank, wrong)


def _one_launch(args: Sequence[str], num_procs: int, expected_line: str, code: int,
                watched: Sequence[Path], **kwargs) -> float:
    before = snapshot(*watched)
    ranks, elapsed = launch_ranks(args, num_procs, **kwargs)
    assert snapshot(*watched) == before
    for rank, result in enumerate(ranks):
        assert (result.code, result.errors) == (code, [ERROR + expected_line]), \
            (rank, result.output[-3000:])
        assert "Traceback" not in result.output, (rank, result.output[-3000:])
    assert elapsed < SECONDS, f"{elapsed:.1f} s"
    return elapsed


def _dataset_with_cache(inputs: Path, folder: Path) -> Tuple[str, Path, str]:
    """A copy of the dataset with the index cache this test's runs use: (prefix, cache
    folder, the name of the train split's files)."""
    from megatron.data.gpt_dataset import build_train_valid_test_datasets

    folder.mkdir()
    prefix = _copy_dataset(str(inputs / "data"), folder / "data")
    # Samples of a 3-iteration run of 8 per batch: train 24, valid and test 2 x 8.
    train, _, _ = build_train_valid_test_datasets(
        data_prefix=[prefix], splits_string="90,8,2", train_valid_test_num_samples=[24, 16, 16],
        seq_length=32, seed=1234)
    return prefix, Path(train.cache_dir), train.desc_hash


@pytest.mark.parametrize("num_procs", [2, 4])
def test_damaged_index_cache_is_named_on_every_rank(inputs, tmp_path, num_procs):
    prefix, cache, name = _dataset_with_cache(inputs, tmp_path / "damaged")
    victim = cache / f"{name}_sample_idx.npy"
    victim.write_bytes(b"\x93NUMPY garbage")
    _one_launch(_base(prefix), num_procs,
                f"data index cache {victim} is damaged (we only support format version (1,0), "
                "(2,0), and (3,0), not (32, 103)); delete "
                f"{cache}/{name}* and it is rebuilt on the next start", 1, [tmp_path])


def test_index_cache_of_another_configuration_is_named(inputs, tmp_path):
    prefix, cache, name = _dataset_with_cache(inputs, tmp_path / "other")
    np.save(cache / f"{name}_shuffle_idx.npy", np.arange(5, dtype=np.uint32))
    samples = len(np.load(cache / f"{name}_sample_idx.npy")) - 1
    _one_launch(_base(prefix), 2,
                f"data index cache {cache}/{name}_shuffle_idx.npy holds (5,) entries, not the "
                f"{samples} samples of {cache}/{name}_sample_idx.npy; delete {cache}/{name}* and "
                "it is rebuilt on the next start", 1, [tmp_path])


def test_port_in_use_is_one_line(inputs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        elapsed = _one_launch(
            _base(str(inputs / "data")), 1,
            f"cannot start the process group at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} "
            "(The server socket has failed to listen on any local network address. port: "
            f"{port}, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in "
            "use); is the port in use? give the launcher another --master_port", 1, [inputs], port=port)
    assert elapsed < SECONDS


def test_the_launcher_fails_too(inputs):
    """torchrun on 4 ranks: its own exit code is non-zero and the line is there."""
    code, errors, output = run_pretrain_refused(
        _base(str(inputs / "magic")), num_procs=4, timeout=SECONDS * 2)
    assert code == 1, output[-3000:]
    assert errors and set(errors) == {f"{ERROR}{inputs}/magic.idx: unrecognised magic "
                                      "b'NOTMAGIC!'"}, output[-3000:]


@pytest.mark.parametrize("switch", ["1", None], ids=["MEGATRON_TRACEBACK=1", "default"])
def test_traceback_only_when_asked_for(inputs, switch):
    env = {key: value for key, value in os.environ.items() if key != "MEGATRON_TRACEBACK"}
    env.update(OMP_NUM_THREADS="1", **({"MEGATRON_TRACEBACK": switch} if switch else {}))
    completed = processes.run(
        [sys.executable, str(REPO_ROOT / "pretrain_gpt.py"),
         *_base(str(inputs / "data"), "--fp16", "--bf16")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert lines[-1] == f"{ERROR}--fp16 and --bf16 are mutually exclusive", completed.stderr[-2000:]
    assert ("Traceback (most recent call last):" in completed.stderr) == bool(switch)
