"""Benchmark: fused softmax kernels vs the torch path vs SDPA (needs a CUDA device).

Two tables, forward + backward times in milliseconds (CUDA events, median of --iters):
  softmax only:    fused kernel vs torch path (fp32 softmax of scale*x with the mask, cast
                   back), for the causal and padding masks;
  core attention:  QK^T -> softmax (fused or torch) -> PV, vs
                   torch.nn.functional.scaled_dot_product_attention(is_causal=True).
Run: python tests/bench/bench_fused_softmax.py [--seq-lengths 512 1024 2048 4096]
On a machine without CUDA it says so and exits 0. Does not need deepspeed.
"""
import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FILL = -10000.0


def _device() -> torch.device:
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError:
        return torch.device("cuda")
    return torch.device(get_accelerator().device_name())


def _time_ms(fn: Callable[[], None], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def torch_path_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor],
                       scale: float) -> torch.Tensor:
    """What FusedScaleMaskSoftmax does without kernels (softmax in fp32)."""
    x = scores.float() * scale
    if mask is not None:
        x = x.masked_fill(mask, FILL)
    return torch.softmax(x, dim=-1).to(scores.dtype)


def _fwd_bwd(forward: Callable[[], torch.Tensor], grad: torch.Tensor,
             inputs: List[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        torch.autograd.grad(forward(), inputs, grad)  # no .grad accumulation in the timing
    return step


def bench_softmax(args, dtype: torch.dtype, seq: int) -> List[str]:
    from megatron.fused_kernels import fused_scale_mask_softmax

    device = _device()
    shape = (args.batch, args.heads, seq, seq)
    scores = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    scale = 1.0 / math.sqrt(args.head_dim)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)
    padding = torch.rand(args.batch, 1, 1, seq, device=device) < 0.1
    rows = []
    for name, mask_type, mask in (("causal", "causal", causal), ("padding", "padding", padding)):
        fused = _time_ms(_fwd_bwd(lambda: fused_scale_mask_softmax(scores, mask, scale,
                                                                   mask_type),
                                  grad, [scores]),
                         args.warmup, args.iters)
        eager = _time_ms(_fwd_bwd(lambda: torch_path_softmax(scores, mask, scale), grad,
                                  [scores]),
                         args.warmup, args.iters)
        rows.append(f"| {str(dtype)[6:]:8} | {seq:6} | {name:8} | {fused:9.3f} | {eager:10.3f} "
                    f"| {eager / fused:6.2f}x |")
    return rows


def bench_attention(args, dtype: torch.dtype, seq: int) -> str:
    from megatron.fused_kernels import fused_scale_mask_softmax

    device = _device()
    shape = (args.batch, args.heads, seq, args.head_dim)
    q, k, v = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3)]
    grad = torch.randn(shape, device=device, dtype=dtype)
    scale = 1.0 / math.sqrt(args.head_dim)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)

    def with_fused() -> torch.Tensor:
        probs = fused_scale_mask_softmax(q @ k.transpose(-1, -2), None, scale, "causal")
        return probs @ v

    def with_torch() -> torch.Tensor:
        return torch_path_softmax(q @ k.transpose(-1, -2), causal, scale) @ v

    def with_sdpa() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    times = [_time_ms(_fwd_bwd(fn, grad, [q, k, v]), args.warmup, args.iters)
             for fn in (with_fused, with_torch, with_sdpa)]
    return (f"| {str(dtype)[6:]:8} | {seq:6} | {times[0]:9.3f} | {times[1]:10.3f} "
            f"| {times[2]:8.3f} |")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"],
                        choices=["float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fused_softmax: needs a CUDA device; nothing to measure on this machine.")
        return 0
    from megatron.fused_kernels import fused_kernels_available

    if not fused_kernels_available():
        print("bench_fused_softmax: the fused kernels did not build (see the warning above).")
        return 1
    dtypes = [getattr(torch, name) for name in args.dtypes]
    print(f"device: {torch.cuda.get_device_name()}, batch {args.batch}, heads {args.heads}, "
          f"head dim {args.head_dim}; forward + backward, median ms of {args.iters}")
    print("\nsoftmax only\n| dtype    | seq    | mask     | fused ms  | torch ms   | speedup |")
    print("|----------|--------|----------|-----------|------------|---------|")
    for dtype in dtypes:
        for seq in args.seq_lengths:
            print("\n".join(bench_softmax(args, dtype, seq)))
    print("\ncore attention (causal)\n| dtype    | seq    | fused ms  | torch ms   | sdpa ms  |")
    print("|----------|--------|-----------|------------|----------|")
    for dtype in dtypes:
        for seq in args.seq_lengths:
            print(bench_attention(args, dtype, seq))
    return 0


if __name__ == "__main__":
    sys.exit(main())
