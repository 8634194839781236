"""Benchmark: `F.linear` (input @ weight^T) against the swapped product (weight @ input^T)^T
for the few rows of a generation step, on CPU, with the 125M model's weight shapes.

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/bench_few_rows_linear.py \\
        [--rows 1 2 4 8 12 16 32] [--dtypes fp32 bf16]

Prints, per dtype and weight shape, time(F.linear) / time(swapped) at each row count (> 1:
the swap is faster), both timed alternately in one run on weights cycled through so they
come from memory as in a model's forward. `megatron.core.tensor_parallel.few_rows_linear`
takes the swap where this table showed it faster.
"""
from __future__ import annotations

import argparse
import time
from typing import List

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50304, 768)]


def _time_ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def ratios(dtype: torch.dtype, shape, row_counts: List[int], rounds: int) -> List[float]:
    copies = 4 if shape[0] > 10000 else 24  # > L2 so the weights stream from memory
    weights = [torch.randn(shape).to(dtype) for _ in range(copies)]
    bias = torch.randn(shape[0]).to(dtype)
    turn = [0]

    def weight():
        turn[0] += 1
        return weights[turn[0] % copies]

    calls = 8 if shape[0] > 10000 else 48
    result = []
    for rows in row_counts:
        x = torch.randn(rows, shape[1]).to(dtype)
        plain = swapped = 0.0
        for _ in range(rounds):
            plain += _time_ms(lambda: F.linear(x, weight(), bias), calls)
            swapped += _time_ms(lambda: torch.addmm(bias[:, None], weight(), x.t()).t(), calls)
        result.append(plain / swapped)
    return result


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 15, 16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"threads {torch.get_num_threads()}; time(F.linear) / time(swapped), > 1: swap faster")
    print("| dtype | weight | " + " | ".join(f"{rows} rows" for rows in args.rows) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in args.rows) + " |")
    with torch.no_grad():
        for name in args.dtypes:
            for shape in SHAPES:
                row = ratios(DTYPES[name], shape, args.rows, args.rounds)
                print(f"| {name} | {shape[0]}x{shape[1]} | "
                      + " | ".join(f"{value:.2f}" for value in row) + " |", flush=True)


if __name__ == "__main__":
    main()
