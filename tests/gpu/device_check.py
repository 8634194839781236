"""One prepared check of the GPU path on a lent accelerator (driven by device_check.sh).

Steps, each time-boxed, each result appended to $OUT/device_check.md (the device tool copies
$OUT back), a failed or timed-out step recorded and the next one run:

  a. the GPU tests (tests/gpu: the fused softmax kernels' parity);
  b. fused softmax kernels vs the torch path vs SDPA (tests/bench/bench_fused_softmax.py);
  c. 1.3B GPT (24 layers, h2048, 16 heads, s2048) in bf16 on one GPU, ZeRO-1, SDPA, a few
     iterations: tokens/s, TFLOP/s and MFU against the datasheet bf16 dense peak;
  d. fp16 with dynamic loss scaling (initial scale 2^32: the first steps overflow and the
     scale falls) for a few iterations: the losses and loss scales.

--dry-run (or DRY_RUN=1) runs the same steps at tiny sizes on the CPU: bf16 training, and for
(d), since this project refuses fp16 on a CPU (fp16 with loss scaling is for GPUs), a check that
build_config accepts the fp16 flags for a CUDA accelerator. Exit status: 0 when every step passed.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

# Datasheet dense bf16 peak per GPU, TFLOP/s (without sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
VOCAB = 50303  # NullTokenizer adds EOD: 50304


def peak_tflops(device_name: str) -> float:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return float("nan")


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed = []
        path.write_text("# device check\n\n")

    def add(self, title: str, text: str) -> None:
        with self.path.open("a") as out:
            out.write(f"## {title}\n\n```\n{text.rstrip()}\n```\n\n")
        print(f"== {title}\n{text.rstrip()}\n", flush=True)


def run_step(report: Report, title: str, command, *, timeout: float, env=None) -> str:
    start = time.monotonic()
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True)
        output, status = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output = ((error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes)
                  else (error.stdout or "")) + f"\nTIMED OUT after {timeout:.0f} s"
        status = "timeout"
    elapsed = time.monotonic() - start
    if status != 0:
        report.failed.append(title)
    report.add(f"{title} (exit {status}, {elapsed:.0f} s)", output[-6000:])
    return output if status == 0 else ""


def write_dataset(directory: Path, num_tokens: int) -> str:
    from tests.bench.bench_training import write_dataset as bench_write

    return bench_write(directory, num_tokens)


def training_flags(*, layers, hidden, heads, seq, micro, global_batch, iters, prefix, precision,
                   extra=()):
    return ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads",
            str(heads), "--seq-length", str(seq), "--max-position-embeddings", str(seq),
            "--micro-batch-size", str(micro), "--global-batch-size", str(global_batch),
            "--train-iters", str(iters), "--lr", "1e-4", "--log-interval", "1",
            "--eval-iters", "0", "--eval-interval", str(iters * 10), "--split", "100,0,0",
            "--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--deepspeed", "--zero-stage", "1", "--no-pipeline-parallel", f"--{precision}",
            *extra]


def throughput_summary(output: str, *, layers, hidden, heads, seq, global_batch, peak: float) -> str:
    from megatron.model.transformer_config import TransformerConfig
    from megatron.training.flops import training_flops_per_iteration

    times = [float(ms) for ms in re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+)", output)]
    steady = times[2:] or times[1:] or times
    if not steady:
        return "no iteration lines"
    ms = sorted(steady)[len(steady) // 2]
    config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                               max_position_embeddings=seq, padded_vocab_size=VOCAB + 1)
    flops = training_flops_per_iteration(config, global_batch_size=global_batch, seq_length=seq)
    tflops = flops / (ms / 1000) / 1e12
    memory = re.findall(r"peak memory \(GiB\): ([0-9.]+)", output)
    return (f"median ms/iter {ms:.1f} (of iterations {len(times) - len(steady) + 1}..{len(times)})"
            f" | tokens/s {global_batch * seq / (ms / 1000):,.0f} | model TFLOP/s {tflops:.1f} | "
            f"peak {peak:g} TFLOP/s | MFU {100 * tflops / peak:.1f}% | peak memory (GiB) "
            f"{memory[-1] if memory else '?'}")


def fp16_flags_accepted() -> str:
    """The fp16 step's flags pass the configuration for a CUDA accelerator (dry run)."""
    from megatron.arguments import parse_args
    from megatron.config.build import build_config

    flags = training_flags(layers=2, hidden=64, heads=4, seq=64, micro=2, global_batch=4, iters=4,
                           prefix="unused", precision="fp16",
                           extra=["--initial-loss-scale", "4294967296", "--loss-scale-window", "2"])
    config = build_config(parse_args(flags), world_size=1, accelerator_name="cuda")
    fp16 = config.ds_config["fp16"]
    assert config.precision.dtype == "fp16" and config.precision.loss_scale is None, config.precision
    return f"fp16 flags accepted for cuda: precision {config.precision}; ds fp16 section {fp16}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", default=bool(os.environ.get("DRY_RUN")))
    parser.add_argument("--out", default=os.environ.get("OUT") or "device_check_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "device_check.md")
    python = sys.executable
    import torch

    dry = args.dry_run
    device = "cpu (dry run)" if dry else (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                         else "no CUDA device")
    peak = 1.0 if dry else peak_tflops(device)  # dry run: MFU column against a nominal 1 TFLOP/s
    report.add("device", f"{device}; torch {torch.__version__}; datasheet bf16 peak {peak} TFLOP/s")

    # a. GPU tests (skipped without CUDA, so the dry run checks they are collected and run)
    run_step(report, "a. GPU tests", [python, "-m", "pytest", "tests/gpu", "-q", "-p",
                                      "no:cacheprovider"], timeout=60 if dry else 120)
    # b. kernels vs torch path vs SDPA
    sizes = ["--seq-lengths", "128", "--iters", "2", "--warmup", "1"] if dry else [
        "--seq-lengths", "512", "1024", "2048", "4096", "--iters", "20"]
    run_step(report, "b. fused softmax vs torch vs SDPA",
             [python, "tests/bench/bench_fused_softmax.py", *sizes], timeout=60 if dry else 90)

    with tempfile.TemporaryDirectory() as tmp:
        shape = (dict(layers=2, hidden=64, heads=4, seq=64, micro=2, global_batch=4, iters=4) if dry
                 else dict(layers=24, hidden=2048, heads=16, seq=2048, micro=8, global_batch=8,
                           iters=8))
        prefix = write_dataset(Path(tmp), shape["global_batch"] * (shape["seq"] + 1)
                               * (shape["iters"] + 4))
        flags = training_flags(**shape, prefix=prefix, precision="bf16",
                               extra=["--use-flash-attn", "--peak-tflops-per-device", str(peak)])
        env = {"OMP_NUM_THREADS": "1"} if dry else {}
        output = run_step(report, "c. 1.3B bf16 training" if not dry else "c. bf16 training (tiny)",
                          [python, "pretrain_gpt.py", *flags], timeout=60 if dry else 240, env=env)
        if output:
            report.add("c. throughput", throughput_summary(
                output, layers=shape["layers"], hidden=shape["hidden"], heads=shape["heads"],
                seq=shape["seq"], global_batch=shape["global_batch"], peak=peak))
        # d. fp16 with dynamic loss scaling
        if dry:
            try:
                report.add("d. fp16 flags (dry run: fp16 is refused on a CPU)",
                           fp16_flags_accepted())
            except Exception as error:  # noqa: BLE001 - recorded, the script goes on
                report.failed.append("d. fp16 flags")
                report.add("d. fp16 flags FAILED", repr(error))
        else:
            fp16 = training_flags(layers=12, hidden=768, heads=12, seq=1024, micro=8,
                                  global_batch=8, iters=12, prefix=prefix, precision="fp16",
                                  extra=["--initial-loss-scale", "4294967296",
                                         "--loss-scale-window", "4", "--use-flash-attn"])
            output = run_step(report, "d. fp16 dynamic loss scaling (125M shape)",
                              [python, "pretrain_gpt.py", *fp16], timeout=120)
            if output:
                lines = re.findall(r"iteration\s+\d+/.*?lm loss: [0-9.E+-]+.*?loss scale: [0-9.E+-]+",
                                   output)
                report.add("d. losses and loss scales", "\n".join(
                    re.sub(r"\| consumed.*?lm loss", "| lm loss", line) for line in lines))
    report.add("summary", f"failed steps: {report.failed or 'none'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
