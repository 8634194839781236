"""What the manifest's checksums cost: save and load of a 125M checkpoint, with the time spent
on checksums printed beside the time of the whole save and load.

    python tests/bench/bench_checkpoint_checksums.py [--layers 12 --hidden 768 --ranks 1]

Trains 1 of 2 iterations of the 125M shape (fp32, ZeRO-1, pipeline engine unless --no-pipeline),
saves it, then resumes it for one more iteration with and without --no-verify-checkpoint, and
prints the save time, the checksum share of it, and both load times, side by side.
"""
import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import processes  # noqa: E402  (needs the repository on the path)
from tests.bench.bench_training import VOCAB, write_dataset  # noqa: E402
from tests.functional.launch import pretrain_command  # noqa: E402

_SAVED = re.compile(r"saved checkpoint \S+ \(iteration \d+\) to \S+ in ([0-9.]+) s "
                    r"\(checksums ([0-9.]+) s\)")
_LOADED = re.compile(r"loaded checkpoint \S+ from \S+ at iteration \d+ .*?in ([0-9.]+) s")


def _run(flags, ranks: int, threads: int) -> str:
    command = pretrain_command(num_procs=ranks)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    completed = processes.run(command + flags, env=env, capture_output=True, text=True,
                              timeout=None)
    output = completed.stdout + completed.stderr
    if completed.returncode:
        raise SystemExit(output[-3000:])
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 2) // args.ranks)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_dataset(Path(tmp), 4 * (args.seq + 1) * 40)
        save_dir = str(Path(tmp) / "checkpoints")
        base = ["--num-layers", str(args.layers), "--hidden-size", str(args.hidden),
                "--num-attention-heads", str(args.heads), "--seq-length", str(args.seq),
                "--max-position-embeddings", str(args.seq), "--micro-batch-size", "1",
                "--global-batch-size", str(args.ranks), "--lr", "1e-4", "--log-interval", "1",
                "--eval-iters", "0", "--eval-interval", "1000", "--split", "100,0,0",
                "--data-path", prefix, "--tokenizer-type", "NullTokenizer",
                "--vocab-size", str(VOCAB), "--deepspeed", "--zero-stage", "1"]
        if args.no_pipeline:
            base.append("--no-pipeline-parallel")
        saved = _SAVED.search(_run(base + ["--train-iters", "2", "--save", save_dir,
                                           "--save-interval", "1", "--exit-interval", "1"],
                                   args.ranks, threads))
        size = sum(f.stat().st_size for f in Path(save_dir).rglob("*") if f.is_file())
        timings = {}
        for label, extra in (("verified", []), ("--no-verify-checkpoint", ["--no-verify-checkpoint"])):
            start = time.perf_counter()
            output = _run(base + ["--train-iters", "2", "--load", save_dir, *extra],
                          args.ranks, threads)
            loaded = _LOADED.search(output)
            timings[label] = float(loaded.group(1)) if loaded else time.perf_counter() - start
    save_s, checksum_s = float(saved.group(1)), float(saved.group(2))
    print("| checkpoint | save s | of which checksums s | load s (verified) | "
          "load s (--no-verify-checkpoint) |")
    print(f"| {size / 2**30:.2f} GiB, {args.layers}L h{args.hidden}, {args.ranks} rank(s) | "
          f"{save_s:.2f} | {checksum_s:.2f} ({100 * checksum_s / save_s:.1f}%) | "
          f"{timings['verified']:.2f} | {timings['--no-verify-checkpoint']:.2f} |")


if __name__ == "__main__":
    main()
