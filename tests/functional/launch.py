"""Helpers for whole-program tests: tiny datasets, launching pretrain_gpt.py, reading its log."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, index_file_path
from tests import processes

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 511  # NullTokenizer: ids 0..510, EOD 511; padded to 512 for TP 1, 2 and 4.
_LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|")
_VALID_LINE = re.compile(r"validation loss at (.*?) \| lm loss value: ([0-9.E+-]+) \| "
                         r"lm loss PPL: ([0-9.E+-]+)")
# A crash (e.g. SIGABRT at exit) prints every thread's Python stack: the test's failure says where.
_CHILD_ENV = dict(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")


def write_random_dataset(prefix: Path, *, num_documents: int = 300, seed: int = 0) -> str:
    """Documents of random ids with a learnable pattern (each id is often followed by id+1)."""
    rng = np.random.RandomState(seed)
    builder = MMapIndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for _ in range(num_documents):
        length = rng.randint(20, 120)
        start = rng.randint(0, VOCAB_SIZE, size=length)
        tokens = np.where(rng.rand(length) < 0.7, (np.arange(length) + start[0]) % VOCAB_SIZE, start)
        builder.add_document(list(tokens.astype(np.int64)) + [VOCAB_SIZE])
    builder.finalize(index_file_path(str(prefix)))
    return str(prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_gpt_args(data_prefix: str, *, train_iters: int, global_batch_size: int = 8,
                  micro_batch_size: int = 2, extra: Sequence[str] = ()) -> List[str]:
    return [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--max-position-embeddings", "32",
        "--micro-batch-size", str(micro_batch_size), "--global-batch-size", str(global_batch_size),
        "--train-iters", str(train_iters), "--lr", "1e-3", "--min-lr", "1e-4",
        "--lr-decay-style", "cosine", "--lr-warmup-iters", "2", "--weight-decay", "0.1",
        "--clip-grad", "1.0", "--log-interval", "1", "--eval-interval", "1000",
        "--eval-iters", "2", "--split", "90,8,2", "--data-path", data_prefix,
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB_SIZE),
        "--seed", "1234", "--use-cpu-initialization", "--deepspeed", "--zero-stage", "1",
        *extra,
    ]


def pretrain_command(*, num_procs: int = 1, launcher: str = "torchrun",
                     script: Path = REPO_ROOT / "pretrain_gpt.py") -> List[str]:
    """The command that starts `script` on `num_procs` ranks: plain python for one process,
    else torchrun or the deepspeed launcher on a free port."""
    script = str(script)
    if num_procs == 1 and launcher == "torchrun":
        return [sys.executable, script]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                str(num_procs), "--master_port", str(free_port()), script]
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus",
                str(num_procs), "--master_port", str(free_port()), script]
    raise ValueError(f"unknown launcher {launcher}")


def run_pretrain(args: Sequence[str], *, num_procs: int = 1, launcher: str = "torchrun",
                 timeout: float = 300, cwd: Path = REPO_ROOT,
                 script: Path = REPO_ROOT / "pretrain_gpt.py") -> str:
    """Run pretrain_gpt.py (plain python for one process, else torchrun or deepspeed) in its
    own process group: a timeout or a failure kills every rank, not only the launcher.
    `script`: a test entry point wrapping pretrain_gpt.py instead (e.g. consumption_entry.py)."""
    command = pretrain_command(num_procs=num_procs, launcher=launcher, script=script)
    env = dict(os.environ, **_CHILD_ENV)
    try:
        completed = processes.run(command + list(args), cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:  # every rank is gone: the group was killed
        output = (error.output or "") + (error.stderr or "")
        raise AssertionError(f"{Path(script).name} timed out after {timeout:.0f} s:\n"
                             f"{output[-6000:]}") from None
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise AssertionError(f"{Path(script).name} exited {completed.returncode}:\n{output[-6000:]}")
    return output


_ERROR_LINE = re.compile(r"^pretrain_gpt\.py: error: .*$", re.MULTILINE)


def run_pretrain_refused(args: Sequence[str], *, num_procs: int = 1,
                         timeout: float = 120) -> Tuple[int, List[str], str]:
    """pretrain_gpt.py expected to stop with an error: (exit code, its error lines, output)."""
    completed = processes.run(pretrain_command(num_procs=num_procs) + list(args), cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout,
                              env=dict(os.environ, **_CHILD_ENV))
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output[-3000:]
    return completed.returncode, _ERROR_LINE.findall(output), output


def losses_by_iteration(output: str) -> Dict[int, float]:
    return {int(match.group(1)): float(match.group(2)) for match in _LOSS_LINE.finditer(output)}


def field_by_iteration(output: str, name: str) -> Dict[int, float]:
    """The value of `| <name>: <value> |` on every iteration log line, e.g. "grad norm"
    (printed with 3 decimals) or "learning rate"; iterations without the field are left out."""
    pattern = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? " + re.escape(name) + r": ([0-9.E+-]+) \|")
    return {int(match.group(1)): float(match.group(2)) for match in pattern.finditer(output)}


def validation_results(output: str) -> List[tuple]:
    return [(m.group(1), float(m.group(2)), float(m.group(3))) for m in _VALID_LINE.finditer(output)]


def write_json(path: Path, content: dict) -> str:
    path.write_text(json.dumps(content))
    return str(path)
