"""What ZeRO-Offload costs in step time: the same run with the optimizer on the accelerator
(torch's fused AdamW) and offloaded (DeepSpeed's CPU Adam, --cpu-optimizer), side by side.

    .venv/bin/python tests/bench/bench_offload.py                  # 125M shape, ZeRO-1 and -2
    .venv/bin/python tests/bench/bench_offload.py --iters 4 --stages 2

One rank, fp32, the 125M shape of bench_training.py (12L h768, seq 512, batch 2), synthetic
tokens. Each configuration runs in its own process; the first two iterations (start-up,
first-touch allocation) are dropped. Prints the mean step time and the mean of the
"optimizer" timer (--timing-log-level 1), which is where offload changes the work: on a CPU
machine "offload" moves nothing, so the figures compare the two Adam implementations plus
DeepSpeed's offload bookkeeping (gradient copies into the CPU partition). Figures:
tests/bench/RESULTS.md.
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import SHAPES, VOCAB, write_dataset  # noqa: E402
from tests import processes  # noqa: E402

_STEP = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+) ")
# The timers report (--timing-log-level 1, min/max over ranks): "    optimizer ....: (a, b)".
_OPTIMIZER = re.compile(r"^\s*optimizer \.+: \(([0-9.]+), ([0-9.]+)\)", re.MULTILINE)
_SKIPPED_ITERATIONS = 2


def run_once(prefix: str, *, stage: int, offload: bool, iters: int, threads: int,
             tmp: Path) -> dict:
    layers, hidden, heads, seq, global_batch, micro_batch = SHAPES["125m"]
    flags = [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
        "--seq-length", str(seq), "--max-position-embeddings", str(seq),
        "--micro-batch-size", str(micro_batch), "--global-batch-size", str(global_batch),
        "--train-iters", str(iters), "--lr", "1e-4", "--log-interval", "1", "--eval-iters", "0",
        "--eval-interval", str(iters * 10), "--split", "100,0,0", "--data-path", prefix,
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--deepspeed",
        "--zero-stage", str(stage), "--no-pipeline-parallel", "--timing-log-level", "1",
    ]
    if offload:
        config = tmp / f"offload_zero{stage}.json"
        config.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
        flags += ["--cpu-optimizer", "--deepspeed_config", str(config)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    completed = processes.run([sys.executable, str(REPO_ROOT / "pretrain_gpt.py"), *flags], env=env,
                              capture_output=True, text=True, timeout=None)
    if completed.returncode:
        raise SystemExit(f"run failed (ZeRO {stage}, offload {offload}):\n"
                         f"{(completed.stdout + completed.stderr)[-3000:]}")
    steps = {int(i): float(ms) for i, ms in _STEP.findall(completed.stdout)}
    steady = [ms for i, ms in steps.items() if i > _SKIPPED_ITERATIONS]
    optimizer = [float(high) for _, high in _OPTIMIZER.findall(completed.stdout)][_SKIPPED_ITERATIONS:]
    return {"step_ms": statistics.mean(steady), "step_sd": statistics.pstdev(steady),
            "optimizer_ms": statistics.mean(optimizer) if optimizer else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if args.iters <= _SKIPPED_ITERATIONS:
        parser.error(f"--iters must exceed {_SKIPPED_ITERATIONS}")
    _, _, _, seq, global_batch, _ = SHAPES["125m"]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        prefix = write_dataset(tmp, global_batch * (seq + 1) * (args.iters + 20))
        for stage in args.stages:
            plain = run_once(prefix, stage=stage, offload=False, iters=args.iters, threads=args.threads,
                             tmp=tmp)
            offload = run_once(prefix, stage=stage, offload=True, iters=args.iters, threads=args.threads,
                               tmp=tmp)
            rows.append((stage, plain, offload))
    print(f"125M (12L h768 s{seq} B{global_batch}), fp32, 1 rank, {args.threads} threads, "
          f"{args.iters - _SKIPPED_ITERATIONS} timed iterations")
    print("| ZeRO | step ms, AdamW on device | step ms, offload + DeepSpeedCPUAdam | offload cost | "
          "optimizer ms, device | optimizer ms, offload |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage, plain, offload in rows:
        cost = 100.0 * (offload["step_ms"] / plain["step_ms"] - 1.0)
        print(f"| {stage} | {plain['step_ms']:.0f} ± {plain['step_sd']:.0f} | "
              f"{offload['step_ms']:.0f} ± {offload['step_sd']:.0f} | {cost:+.1f}% | "
              f"{plain['optimizer_ms']:.0f} | {offload['optimizer_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
