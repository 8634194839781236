"""Shared pieces of the side-by-side benchmarks (bench_vs_upstream.py, bench_vs_plain_loop.py,
bench_pipeline_balance.py, bench_startup.py): the dataset both programs read, the launch
commands of this project and of the upstream peer, and the log parser.

The machines are shared and noisy, so every benchmark runs its contenders alternately
(A B A B ...) in one sitting and compares medians of steady iterations; a figure from another
run is never compared with one of this run.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import processes  # noqa: E402  (needs the repository on the path)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SYNTHETIC_VOCAB = 50256  # NullTokenizer adds EOD: 50257 entries, padded to GPT-2's 50304
PADDED_VOCAB = 50304  # GPT-2 BPE and the synthetic data both pad to this at one TP rank
# upstream's switches for its CUDA-only fusions (../shared/peer/README.md)
UPSTREAM_CPU_FLAGS = ["--distributed-backend", "gloo", "--no-masked-softmax-fusion",
                      "--no-bias-gelu-fusion", "--no-bias-dropout-fusion",
                      "--no-gradient-accumulation-fusion",
                      "--no-async-tensor-model-parallel-allreduce"]
ITERATION_TIME = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([\d.]+)")
LM_LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([\d.E+-]+)")


def upstream_dir() -> Optional[Path]:
    """The peer's setup ($UPSTREAM, else /tmp/upstream-mds) when it is there."""
    path = Path(os.environ.get("UPSTREAM", "/tmp/upstream-mds"))
    return path if (path / "venv" / "bin" / "python").exists() else None


def build_dataset(directory: Path) -> List[str]:
    """Tokenizer + data flags of a dataset in `directory`, read identically by both programs:
    the reference corpus in GPT-2 BPE (this project's tools/preprocess_data.py) when
    ../shared/data is there, else synthetic token ids with the NullTokenizer."""
    prefix = directory / "corpus"
    vocab, merges = SHARED_DATA / "gpt2-vocab.json", SHARED_DATA / "gpt2-merges.txt"
    if (SHARED_DATA / "corpus.jsonl").exists() and vocab.exists():
        tokenizer = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(vocab),
                     "--merge-file", str(merges)]
        processes.run([sys.executable, str(REPO_ROOT / "tools" / "preprocess_data.py"),
                       "--input", str(SHARED_DATA / "corpus.jsonl"), "--output-prefix", str(prefix),
                       "--append-eod", "--workers", "1", *tokenizer],
                      timeout=600, check=True, capture_output=True)
        return tokenizer + ["--data-path", f"{prefix}_text_document"]
    import numpy as np

    from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, index_file_path

    rng = np.random.RandomState(0)
    builder = MMapIndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(500):
        builder.add_document(list(rng.randint(0, SYNTHETIC_VOCAB, size=int(rng.randint(200, 2000))))
                             + [SYNTHETIC_VOCAB])
    builder.finalize(index_file_path(str(prefix)))
    return ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(SYNTHETIC_VOCAB),
            "--data-path", str(prefix)]


def model_flags(*, layers: int, hidden: int, heads: int, seq: int, micro_batch: int,
                global_batch: int, iters: int) -> List[str]:
    """Shape and schedule flags both programs accept, spelled identically."""
    return ["--num-layers", str(layers), "--hidden-size", str(hidden),
            "--num-attention-heads", str(heads), "--seq-length", str(seq),
            "--max-position-embeddings", str(seq), "--micro-batch-size", str(micro_batch),
            "--global-batch-size", str(global_batch), "--train-iters", str(iters),
            "--lr", "1e-4", "--log-interval", "1", "--eval-iters", "0",
            "--eval-interval", str(iters * 10), "--split", "100,0,0", "--seed", "1234"]


def project_command(ranks: int, flags: Sequence[str], *, port: int) -> List[str]:
    """This project's pretrain_gpt.py: one plain process, or the deepspeed launcher."""
    script = str(REPO_ROOT / "pretrain_gpt.py")
    if ranks == 1:
        return [sys.executable, script, *flags]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", "1",
            "--num_gpus", str(ranks), "--master_port", str(port), script, *flags]


def upstream_command(ranks: int, flags: Sequence[str]) -> List[str]:
    """Upstream's pretrain_gpt.py through ../shared/peer/run_upstream.sh."""
    runner = REPO_ROOT.parent / "shared" / "peer" / "run_upstream.sh"
    return ["bash", str(runner), str(ranks), *flags, *UPSTREAM_CPU_FLAGS]


@dataclass
class RunResult:
    """One launch: per-iteration times and losses, and when its first iteration line came."""

    name: str
    returncode: int
    iteration_ms: Dict[int, float] = field(default_factory=dict)
    losses: Dict[int, float] = field(default_factory=dict)
    seconds_to_first_iteration: Optional[float] = None
    seconds_to_marker: Dict[str, float] = field(default_factory=dict)
    """Seconds from the launch to the first line containing each of `launch`'s markers."""
    tail: str = ""

    def steady_ms(self, skip: int) -> List[float]:
        return [ms for it, ms in sorted(self.iteration_ms.items()) if it > skip]


def launch(name: str, command: Sequence[str], *, threads: int, timeout: float,
           env: Optional[Dict[str, str]] = None, markers: Sequence[str] = ()) -> RunResult:
    """Run `command`, reading its output as it comes (the start-up figure is the wall time
    from the launch to the first iteration's log line, or to the first line containing each
    of `markers`)."""
    child_env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
                     **(env or {}))
    start = time.perf_counter()
    child = processes.start(list(command), env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    result = RunResult(name=name, returncode=-1)
    lines: List[str] = []
    try:
        for line in child.stdout:
            lines.append(line)
            for marker in markers:
                if marker in line and marker not in result.seconds_to_marker:
                    result.seconds_to_marker[marker] = time.perf_counter() - start
            match = ITERATION_TIME.search(line)
            if match:
                if result.seconds_to_first_iteration is None:
                    result.seconds_to_first_iteration = time.perf_counter() - start
                result.iteration_ms[int(match.group(1))] = float(match.group(2))
            loss = LM_LOSS.search(line)
            if loss:
                result.losses[int(loss.group(1))] = float(loss.group(2))
            if time.perf_counter() - start > timeout:
                break
        child.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        result.returncode = child.returncode
    except subprocess.TimeoutExpired:
        result.returncode = 124
    finally:
        processes.kill_group(child)
    result.tail = "".join(lines[-40:])
    return result


def median_tokens_per_second(runs: Sequence[RunResult], *, tokens_per_iteration: int,
                             skip: int) -> Optional[float]:
    """tokens/s from the median iteration time over every steady iteration of `runs`."""
    times = [ms for run in runs for ms in run.steady_ms(skip)]
    if not times:
        return None
    return tokens_per_iteration / (statistics.median(times) / 1000.0)


def report_failures(runs: Sequence[RunResult]) -> None:
    for run in runs:
        if run.returncode != 0 or not run.iteration_ms:
            print(f"!! {run.name} exited {run.returncode}; last output:\n{run.tail}", flush=True)


def matmul_peak_tflops(dtype_name: str, threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-N square matmul rate on this machine with `threads` threads (the MFU
    denominator); measured in this process, so call it while no contender runs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size ** 3 / best / 1e12


class MachinePeak:
    """The matmul peak of the threads a benchmark's contenders use together, measured
    before the first launch and after the last (the machine's state can drift in a run);
    MFU is taken against the higher of the two."""

    def __init__(self, dtype_names: Sequence[str], threads: int) -> None:
        self.threads = threads
        self.samples = {name: [matmul_peak_tflops(name, threads)] for name in dtype_names}

    def measure_again(self) -> None:
        for name, found in self.samples.items():
            found.append(matmul_peak_tflops(name, self.threads))

    def best(self, dtype_name: str) -> float:
        return max(self.samples[dtype_name])

    def describe(self) -> str:
        return "; ".join(f"{name} {' / '.join(f'{value:.3f}' for value in found)} TFLOP/s"
                         for name, found in self.samples.items())


def training_flops_per_token(*, layers: int, hidden: int, heads: int, seq: int,
                             vocab: int = PADDED_VOCAB) -> float:
    """Model FLOPs per trained token (Megatron's formula, no recompute), the same number
    for every contender of a comparison."""
    from megatron.model.transformer_config import TransformerConfig
    from megatron.training.flops import training_flops_per_iteration

    config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                               max_position_embeddings=seq, padded_vocab_size=vocab)
    return training_flops_per_iteration(config, global_batch_size=1, seq_length=seq) / seq


def mfu(tokens_per_second: Optional[float], flops_per_token: float, peak_tflops: float) -> str:
    if not tokens_per_second:
        return "n/a"
    return f"{100.0 * tokens_per_second * flops_per_token / (peak_tflops * 1e12):.1f}%"


def ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def fmt(value: Optional[float], digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
