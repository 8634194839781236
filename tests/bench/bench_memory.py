"""Measured memory per rank against tools/estimate_memory.py's estimate, on this CPU.

    .venv/bin/python tests/bench/bench_memory.py                 # 125M, with and without recompute
    .venv/bin/python tests/bench/bench_memory.py --shape tiny --iters 3

Runs pretrain_gpt.py through tests/functional/memory_entry.py (one process, fp32, ZeRO-1,
--no-pipeline-parallel, one thread), which prints the split it measures from the live tensors
(parameters, gradient buffers, optimizer state, tensors saved for backward) and the peak RSS
after each iteration; then estimates the same flags with megatron.training.memory_estimate.

RSS includes the runtime itself (Python, torch, DeepSpeed, gloo): the estimate's `overhead`
for a CPU is the peak RSS of the same program with a negligible model (`--shape baseline`:
2 layers, h64, 135K parameters), measured here and printed first.
"""
import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import processes  # noqa: E402

GIB = 2 ** 30
SHAPES = {  # layers, hidden, heads, seq, micro batch, vocab (NullTokenizer adds EOD)
    "baseline": (2, 64, 4, 32, 2, 511),
    "tiny": (4, 256, 8, 256, 4, 50303),
    "125m": (12, 768, 12, 512, 2, 50303),
}


def flags_for(shape: str, data_prefix: str, iters: int, extra=()) -> list:
    layers, hidden, heads, seq, micro, vocab = SHAPES[shape]
    return ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads",
            str(heads), "--seq-length", str(seq), "--max-position-embeddings", str(seq),
            "--micro-batch-size", str(micro), "--global-batch-size", str(micro),
            "--train-iters", str(iters), "--lr", "1e-4", "--log-interval", "1", "--eval-iters", "0",
            "--eval-interval", "1000", "--split", "100,0,0", "--data-path", data_prefix,
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab), "--deepspeed",
            "--zero-stage", "1", "--no-pipeline-parallel", *extra]


def measure(flags: list, *, num_procs: int = 1, timeout: float = 1200) -> list:
    """The MEMORY_SPLIT reports of the last iteration, one per rank."""
    entry = str(REPO_ROOT / "tests" / "functional" / "memory_entry.py")
    command = ([sys.executable, entry] if num_procs == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_procs),
                entry])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = processes.run(command + flags, env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=REPO_ROOT)
    if done.returncode:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    reports = [json.loads(line) for line in re.findall(r"MEMORY_SPLIT (\{[^{}]*\})", done.stdout)]
    last = max(report["iteration"] for report in reports)
    return sorted((r for r in reports if r["iteration"] == last), key=lambda r: r["rank"])


def estimate(flags: list, *, world_size: int = 1, overhead_bytes=None):
    from megatron.arguments import parse_args
    from megatron.config.build import build_config
    from megatron.training.memory_estimate import estimate_memory

    config = build_config(parse_args(flags), world_size=world_size, accelerator_name="cpu")
    return estimate_memory(config, accelerator="cpu", overhead_bytes=overhead_bytes).worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "baseline"], default="125m")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from tests.functional.launch import write_random_dataset

        prefix = write_random_dataset(Path(tmp) / "data", num_documents=400)
        baseline = measure(flags_for("baseline", prefix, 3))[0]["peak_rss"]
        print(f"runtime baseline (peak RSS, 135K-parameter model): {baseline / GIB:.3f} GiB")
        print("| shape | recompute | | parameters | gradients | optimizer state | activations "
              "| peak RSS / estimated peak | estimate / measured |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for recompute, extra in (("none", []), ("full", ["--checkpoint-activations"])):
            flags = flags_for(args.shape, prefix, args.iters, extra)
            measured = measure(flags)[0]
            worst = estimate(flags, overhead_bytes=baseline)
            print(f"| {args.shape} | {recompute} | measured | {measured['parameters'] / GIB:.3f} | "
                  f"{measured['gradients'] / GIB:.3f}* | {measured['optimizer_state'] / GIB:.3f} | "
                  f"{measured['activations'] / GIB:.3f} | {measured['peak_rss'] / GIB:.3f} "
                  f"({measured['peak_rss_before_step'] / GIB:.3f} before the first step) | |")
            print(f"| | | estimated | {worst.parameters / GIB:.3f} | {worst.gradients / GIB:.3f} | "
                  f"{worst.optimizer_state / GIB:.3f} | {worst.activations / GIB:.3f} | "
                  f"{worst.peak / GIB:.3f} (in the {worst.peak_phase}; step buffers "
                  f"{worst.step_buffers / GIB:.3f}) | {worst.peak / measured['peak_rss']:.3f} |",
                  flush=True)
        print("* measured gradients count DeepSpeed's reduce bucket at its allocated size "
              "(torch.empty: only touched pages are resident); the estimate counts the "
              "resident part on a CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
