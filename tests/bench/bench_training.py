"""Training throughput of pretrain_gpt.py: tokens/s, model TFLOP/s and MFU.

    .venv/bin/python tests/bench/bench_training.py --shape tiny --layout 1
    .venv/bin/python tests/bench/bench_training.py --shape tiny --layout tp2
    .venv/bin/python tests/bench/bench_training.py --shape 125m --layout 1 --precision bf16

Runs the real entry point (through torchrun for several ranks) on synthetic token data for a
fixed number of iterations, drops the first log interval (start-up, first-touch allocation),
and compares the model FLOP rate (megatron.training.flops: the Megatron formula, GQA/SwiGLU/recompute
aware) with a matmul peak measured here in the same precision and thread count.
Reference points measured on the 2-core CPU machines (tests/bench/RESULTS.md): upstream
Megatron-DeepSpeed, tiny shape: ~970 tokens/s on 1 process, ~650 on PP2; a plain PyTorch
loop reaches 74% of the fp32 matmul peak on the 125M shape at one thread.
"""
import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import processes  # noqa: E402  (needs the repository on the path)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import matmul_peak_tflops, training_flops_per_token  # noqa: E402

SHAPES = {  # layers, hidden, heads, seq, global batch, micro batch
    "tiny": (4, 256, 8, 256, 16, 4),
    "125m": (12, 768, 12, 512, 2, 2),
}
LAYOUTS = {  # ranks, extra flags
    "1": (1, ["--no-pipeline-parallel"]),
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--no-pipeline-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "dp2": (2, ["--no-pipeline-parallel"]),
}
VOCAB = 50303  # NullTokenizer adds EOD: 50304 entries, GPT-2's padded size


def write_dataset(directory: Path, num_tokens: int) -> str:
    import numpy as np

    from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, index_file_path

    prefix = str(directory / "bench_text_document")
    rng = np.random.RandomState(0)
    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    while num_tokens > 0:
        length = int(rng.randint(200, 2000))
        builder.add_document(list(rng.randint(0, VOCAB, size=length)) + [VOCAB])
        num_tokens -= length + 1
    builder.finalize(index_file_path(prefix))
    return prefix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--layout", choices=LAYOUTS, default="1")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per rank (default: 2 cores shared by the ranks)")
    args = parser.parse_args()

    layers, hidden, heads, seq, global_batch, micro_batch = SHAPES[args.shape]
    ranks, layout_flags = LAYOUTS[args.layout]
    threads = args.threads or max(1, (os.cpu_count() or 2) // ranks)
    peak_per_rank = matmul_peak_tflops(args.precision, threads)

    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_dataset(Path(tmp), global_batch * (seq + 1) * (args.iters + 20))
        flags = [
            "--num-layers", str(layers), "--hidden-size", str(hidden),
            "--num-attention-heads", str(heads), "--seq-length", str(seq),
            "--max-position-embeddings", str(seq), "--micro-batch-size", str(micro_batch),
            "--global-batch-size", str(global_batch), "--train-iters", str(args.iters),
            "--lr", "1e-4", "--log-interval", str(args.log_interval), "--eval-iters", "0",
            "--eval-interval", str(args.iters * 10), "--split", "100,0,0", "--data-path", prefix,
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--deepspeed", "--zero-stage", "1", "--peak-tflops-per-device", str(peak_per_rank),
            *layout_flags,
        ] + (["--bf16"] if args.precision == "bf16" else [])
        script = str(REPO_ROOT / "pretrain_gpt.py")
        command = ([sys.executable, script] if ranks == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                    script])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        completed = processes.run(command + flags, env=env, capture_output=True, text=True,
                                  timeout=None)
    if completed.returncode:
        print(completed.stdout[-3000:], completed.stderr[-3000:])
        return completed.returncode

    times = [float(ms) for ms in
             re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+) ", completed.stdout)]
    steady = times[1:] or times
    ms = sum(steady) / len(steady)
    tokens_per_second = global_batch * seq / (ms / 1000.0)
    flops = global_batch * seq * training_flops_per_token(layers=layers, hidden=hidden,
                                                          heads=heads, seq=seq, vocab=VOCAB + 1)
    tflops = flops / (ms / 1000.0) / ranks / 1e12
    mfu = 100.0 * tflops / peak_per_rank
    print("| shape | layout | precision | threads/rank | ms/iter | tokens/s (total) | "
          "TFLOP/s per rank | matmul peak per rank | MFU |")
    print(f"| {args.shape} | {args.layout} | {args.precision} | {threads} | {ms:.1f} | "
          f"{tokens_per_second:.0f} | {tflops:.3f} | {peak_per_rank:.3f} | {mfu:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
