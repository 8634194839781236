"""Benchmark: peak memory and step time of activation recompute modes (GPTModel, CPU).

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_recompute.py [--iters 3] [--layers 12 ...]

Modes: none, legacy full (--checkpoint-activations, 1 layer per chunk), selective (core
attention only), and DeepSpeed activation checkpointing with --partition-activations
--checkpoint-in-cpu. Each mode runs in its own process (peak RSS is a process-lifetime
maximum): forward+backward of the masked-mean loss with dropout 0.1, no optimizer step.
"Activation peak" is the peak RSS above the RSS measured after the model was built and
one warm-up step ran (so weights and gradients are in the baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests import processes  # noqa: E402  (needs the repository on the path)

MODES = {
    "none": {},
    "legacy-full": dict(checkpoint_activations=True, checkpoint_num_layers=1),
    "selective": dict(recompute_granularity="selective"),
    "deepspeed-cpu": dict(checkpoint_activations=True, checkpoint_num_layers=1,
                          deepspeed_activation_checkpointing=True),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    import deepspeed

    from megatron.core import parallel_state, tensor_parallel
    from megatron.model.gpt_model import GPTModel
    from megatron.model.recompute import configure_deepspeed_checkpointing
    from megatron.model.transformer_config import TransformerConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    parallel_state.initialize_model_parallel(1, 1)
    overrides = MODES[args.mode]
    if overrides.get("deepspeed_activation_checkpointing"):
        configure_deepspeed_checkpointing(
            mpu=parallel_state.get_mpu(), num_layers=args.layers, partition_activations=True,
            contiguous_checkpointing=False, checkpoint_in_cpu=True, synchronize_each_layer=False,
            profile_backward=False)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    config = TransformerConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        max_position_embeddings=args.seq, seq_length=args.seq, padded_vocab_size=args.vocab,
        hidden_dropout=0.1, attention_dropout=0.1, use_cpu_initialization=True, **overrides)
    model = GPTModel(config)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    position_ids = torch.arange(args.seq).expand(args.batch, args.seq)

    def step() -> float:
        start = time.perf_counter()
        loss = model(tokens, position_ids, None, labels=labels).mean()
        loss.backward()
        return time.perf_counter() - start

    step()  # warm-up: allocates the gradients
    baseline = _rss_bytes()
    times = [step() for _ in range(args.iters)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": args.mode, "step_s": statistics.median(times),
            "activation_peak_mb": max(peak - baseline, 0) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    print(f"GPTModel {args.layers}L h{args.hidden} {args.heads} heads, seq {args.seq}, "
          f"micro batch {args.batch}, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s)")
    print(f"{'mode':<16}{'step (s)':>10}{'activation peak (MiB)':>24}")
    for mode in MODES:
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{name}={getattr(args, name)}" for name in
            ("layers", "hidden", "heads", "seq", "batch", "vocab", "iters")]
        completed = processes.run(command, capture_output=True, text=True, timeout=None)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        if completed.returncode != 0 or not lines:
            print(f"{mode:<16} failed: {completed.stderr[-500:]}")
            continue
        result = json.loads(lines[-1])
        print(f"{mode:<16}{result['step_s']:>10.2f}{result['activation_peak_mb']:>24.0f}")


if __name__ == "__main__":
    main()
