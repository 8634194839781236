"""Benchmark: forward+backward of GPTModel at the 125M shape on CPU, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_model.py [--iters 3] [--swiglu ...]

Prints tokens/s, model TFLOP/s (GQA/SwiGLU-aware Megatron count, megatron/training/flops.py)
and MFU against a square fp32 matmul peak measured first, with the classic attention path
and with torch's scaled_dot_product_attention (--use-flash-attn). No optimizer step.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist


def matmul_peak(sizes=(1024, 2048, 4096), reps: int = 3) -> float:
    """fp32 matmul FLOP/s: the best over square sizes of the median over `reps` products
    (about 96 GFLOP/s at one thread on the 2-core CPU machines)."""
    rates = []
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        rates.append(2 * size ** 3 / statistics.median(times))
    return max(rates)


def bench(args: argparse.Namespace, use_flash_attn: bool) -> dict:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.training.flops import training_flops_per_iteration
    from megatron.model.gpt_model import GPTModel
    from megatron.model.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    try:
        extra = {}
        if args.swiglu:
            extra.update(activation="swiglu", normalization="rmsnorm",
                         position_embedding_type="rope",
                         num_key_value_heads=args.kv_heads or args.heads)
        config = TransformerConfig(
            num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
            max_position_embeddings=args.seq, seq_length=args.seq, padded_vocab_size=args.vocab,
            hidden_dropout=args.dropout, attention_dropout=args.dropout,
            use_cpu_initialization=True, use_flash_attn=use_flash_attn, **extra)
        model = GPTModel(config)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        position_ids = torch.arange(args.seq).expand(args.batch, args.seq)
        times = []
        for step in range(args.warmup + args.iters):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = model(tokens, position_ids, None, labels=labels).mean()
            loss.backward()
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times.append(elapsed)
        seconds = statistics.median(times)
        flops = training_flops_per_iteration(config, global_batch_size=args.batch,
                                             seq_length=args.seq)
        return {"seconds": seconds, "tokens_per_s": args.batch * args.seq / seconds,
                "flops_per_s": flops / seconds, "params": sum(p.numel() for p in model.parameters())}
    finally:
        parallel_state.destroy_model_parallel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--swiglu", action="store_true",
                        help="Llama-style variant: SwiGLU + RMSNorm + rotary (+ --kv-heads)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    peak = matmul_peak()
    print(f"fp32 matmul peak ({args.threads} thread(s)): {peak / 1e9:.1f} GFLOP/s")
    print(f"shape: {args.layers} layers, h{args.hidden}, {args.heads} heads, seq {args.seq}, "
          f"B{args.batch}, V{args.vocab}, dropout {args.dropout}"
          + (", swiglu/rmsnorm/rope" if args.swiglu else ""))
    print(f"{'attention':<10} {'s/iter':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for use_flash_attn in (False, True):
        r = bench(args, use_flash_attn)
        name = "sdpa" if use_flash_attn else "classic"
        print(f"{name:<10} {r['seconds']:8.2f} {r['tokens_per_s']:9.1f} "
              f"{r['flops_per_s'] / 1e12:8.4f} {r['flops_per_s'] / peak:6.1%}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
